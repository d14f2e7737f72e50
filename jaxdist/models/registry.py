"""Model name -> constructor. Every constructor takes num_classes, image_shape, rngs and dtype; some also
read the config.model fields named in MODEL_OPTIONS (hidden_size, num_layers, ..., dim, depth, ..., width)."""
from jaxdist.config import check_choice
from jaxdist.models import cnn, convmixer, resnet, rnn

MODELS = {
    "cnn": cnn.CNN,
    "resnet8": resnet.ResNet8,
    "resnet20": resnet.ResNet20,
    "resnet56": resnet.ResNet56,
    "resnet18": resnet.ResNet18,
    "resnet50": resnet.ResNet50,
    "lstm": rnn.LSTM,  # image_shape = (time, features): data.view='rows' or data.name='ucr'
    "gru": rnn.GRU,
    "convmixer": convmixer.ConvMixer,
}
MODEL_OPTIONS = {"lstm": rnn.OPTIONS, "gru": rnn.OPTIONS, "convmixer": convmixer.OPTIONS,
                 **{name: resnet.OPTIONS for name in MODELS if name.startswith("resnet")}}
SEQUENCE_MODELS = ("lstm", "gru")  # take `lengths` (padded variable-length sequences)
# Have a stack of identical blocks (params with a leading 'layers' axis) that they run through a
# `stack_runner`: a scan, or a pipeline over 'stage' (parallel/pipeline.py).
STACKED_MODELS = ("convmixer",)


def options(model_config) -> dict:
    """The constructor keywords `model_config.name` takes from config.model beyond num_classes."""
    return {k: model_config[k] for k in MODEL_OPTIONS.get(model_config.name, ())}


def validate(config) -> None:
    check_choice("model.name", config.model.name, sorted(MODELS))
