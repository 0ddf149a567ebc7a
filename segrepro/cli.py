"""The ``segrepro`` console script: ``segrepro train [overrides]``, ``segrepro eval checkpoint=PATH [overrides]``."""
from __future__ import annotations

import sys

USAGE = """usage: segrepro {train,eval} [hydra overrides]

  segrepro train                                   train on the built-in synthetic data
  segrepro train model=deeplabv3_r101 loss=ssl data=voc_trainaug
  segrepro train experiment=ssl/voc_deeplabv3      a paper recipe (both stages)
  segrepro train --cfg job                         print the composed config
  segrepro eval checkpoint=runs/.../checkpoints/best.pt
"""


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("train", "eval"):
        print(USAGE, file=sys.stderr)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    command = sys.argv.pop(1)
    if command == "train":
        from .train import main as command_main
    else:
        from .evaluate import main as command_main
    command_main()


if __name__ == "__main__":
    main()
