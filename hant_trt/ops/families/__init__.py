"""Built-in op families; importing this package registers them."""

from . import mbconv, resnet, simple, stride  # noqa: F401
