"""``python -m segrepro.reproduce``: the same as ``segrepro reproduce``."""
from .command import main

main()
