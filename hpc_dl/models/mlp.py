import math

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    """Fully connected layers; with ``hidden=[]`` it is a single perceptron
    (logistic regression for one output, softmax regression for several)."""

    def __init__(self, input_shape, num_outputs: int, hidden: list[int], activation="relu", dropout=0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)
