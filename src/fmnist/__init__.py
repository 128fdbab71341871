"""Fashion-MNIST with LeNet-5 and a scaled-down AlexNet, as a reproducible DVC pipeline."""

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASSES)

__all__ = ["CLASSES", "NUM_CLASSES"]
