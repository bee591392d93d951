"""`selm-train`: train one online iteration from a checkpoint and a pairs file.

    selm-train pairs=data/pairs.jsonl init_checkpoint=models/tiny-random output_dir=runs/x
    selm-train -m train.alpha=0,0.001 pairs=...          # Hydra multirun: one run per alpha
"""

import hydra
from omegaconf import DictConfig

from selm.config import CONF_DIR, validate_config


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    validate_config(cfg)  # a nonsense value fails here, naming its key
    from selm.train import train_iteration  # heavy imports after Hydra has parsed the command line

    out = train_iteration(cfg)
    print(f"trained checkpoint: {out}")


if __name__ == "__main__":
    main()
