"""Model builders: torchvision models by name with num_classes, input channels and a weights policy."""
