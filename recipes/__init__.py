"""Training recipes for CIFAR (VGG-16, ResNet-18, ResNet-20) with bridge's clipped ReLU."""
