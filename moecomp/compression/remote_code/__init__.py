"""Modeling code for checkpoints that a stock config cannot describe.

Uneven expert counts per layer (global expert drop) and removed MoE sub-layers (layer drop) have no
stock config key; quantized experts of a family whose stock checkpoints hold them fused and input-major (gpt-oss,
Llama 4) are stored one linear per expert, which no stock conversion fuses back. Such a checkpoint carries three
files: ``configuration_moecomp.py`` and ``modeling_moecomp.py`` (subclasses of the family's stock config and
*ForCausalLM, generated from templates.py) and ``moecomp_structure.py`` (moecomp/compression/structure.py, copied
verbatim).
Its config gets a model_type of its own (``moecomp_<family>``) so that plain ``from_pretrained``
without ``trust_remote_code`` refuses it instead of loading it with the wrong shapes.
"""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path
from typing import Any

from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

from moecomp.compression import structure
from moecomp.compression.remote_code.templates import CONFIGURATION, MODELING
from moecomp.compression.structure import ModuleLayout

CONFIG_FILE = "configuration_moecomp.py"
MODELING_FILE = "modeling_moecomp.py"
STRUCTURE_FILE = "moecomp_structure.py"
MODEL_TYPE_PREFIX = "moecomp_"


def _check_self_contained(source: str) -> None:
    """structure.py must import nothing from moecomp: the checkpoint has to load without it."""
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        if any(name.split(".")[0] == "moecomp" for name in names):
            raise RuntimeError("structure.py imports moecomp: it cannot be copied into a checkpoint")


def _names(config: Any) -> dict[str, str]:
    config_cls = type(config)
    model_cls: Any = MODEL_FOR_CAUSAL_LM_MAPPING[config_cls]
    prefix = "Moecomp" + config_cls.__name__.removesuffix("Config")
    return {
        "base": config.model_type,
        "model_type": MODEL_TYPE_PREFIX + config.model_type,
        "prefix": prefix,
        "config_module": config_cls.__module__,
        "config_class": config_cls.__name__,
        "model_module": model_cls.__module__,
        "model_class": model_cls.__name__,
        "version": metadata.version("moecomp"),
        "transformers_version": metadata.version("transformers"),
    }


def write_remote_code(out_dir: Path, config: Any, layout: ModuleLayout) -> dict[str, Any]:
    """Write the three code files for a stock ``config``'s family; return the config.json keys they need."""
    names = _names(config)
    structure_source = Path(structure.__file__).read_text()
    _check_self_contained(structure_source)
    (out_dir / STRUCTURE_FILE).write_text(structure_source)
    (out_dir / CONFIG_FILE).write_text(CONFIGURATION.format(**names))
    (out_dir / MODELING_FILE).write_text(MODELING.format(layout=layout.to_json(), **names))
    return {
        "model_type": names["model_type"],
        "architectures": [f"{names['prefix']}ForCausalLM"],
        "auto_map": {
            "AutoConfig": f"{CONFIG_FILE[:-3]}.{names['prefix']}Config",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{names['prefix']}ForCausalLM",
        },
        "moecomp_base_model_type": names["base"],
    }
