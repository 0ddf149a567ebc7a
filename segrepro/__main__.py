"""``python -m segrepro COMMAND [overrides]``: the ``segrepro`` console script."""
from .cli import main

main()
