"""grain: GRAIN structured pruning with knowledge distillation (Yang et al., ACL 2023).

Importing the package registers the compact (pruned) model classes with the HF Auto classes, so
`AutoModelForSequenceClassification.from_pretrained(run_dir / "compact")` works after `import grain`,
and the run-directory resolvers the Hydra configs use (`grain.target`, `grain.slurm`).
"""

__version__ = "0.1.0"

import grain.slurm  # noqa: F401  (registers the run-directory resolver of conf/hydra/default.yaml)
import grain.target  # noqa: F401  (registers the run-directory target resolver of conf/hydra/default.yaml)
from grain.models.registry import register_auto_classes as _register_auto_classes

_register_auto_classes()
