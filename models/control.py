"""Old home of the control preprocessors, kept so existing imports work; the code lives in models/preprocess/."""

from .preprocess import *  # noqa: F403
from .preprocess import __all__  # noqa: F401
