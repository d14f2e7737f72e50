"""Model name -> constructor. Every constructor takes num_classes, image_shape, rngs and dtype."""
from jaxdist.models import cnn, resnet

MODELS = {
    "cnn": cnn.CNN,
    "resnet8": resnet.ResNet8,
    "resnet20": resnet.ResNet20,
    "resnet56": resnet.ResNet56,
    "resnet18": resnet.ResNet18,
    "resnet50": resnet.ResNet50,
}
