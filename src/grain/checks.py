"""One-line checks of config values: each failure is a GrainError naming the setting, what it must be and
an example (used by config validation and by the tasks' own settings)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from grain.errors import GrainError


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def show(key: str, value) -> str:
    """`key=value` as a user would type it (strings quoted)."""
    return f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"


def check_count(cfg: DictConfig, key: str, example: str, minimum: int = 1, null: str | None = None,
                unlimited: str | None = None) -> None:
    """`key` must be an integer >= minimum; `null` (what null means) allows null, `unlimited` allows -1."""
    value = OmegaConf.select(cfg, key)
    if value is None and null is not None:
        return
    if is_int(value) and (value >= minimum or (unlimited is not None and value == -1)):
        return
    allowed = [f"an integer >= {minimum}"]
    if unlimited is not None and unlimited == null:
        allowed.append(f"-1 or null ({unlimited})")
    else:
        if unlimited is not None:
            allowed.append(f"-1 ({unlimited})")
        if null is not None:
            allowed.append(f"null ({null})")
    problem = "is not an integer" if not is_int(value) else "is not allowed"
    if key.endswith("max_steps") and value == 0:
        problem = "is not a step limit (it would train all the epochs)"
    raise GrainError(f"{show(key, value)} {problem}; give {' or '.join(allowed)}, e.g. {example}")


def check_range(cfg: DictConfig, key: str, low: float, high: float, example: str, low_open: bool = False,
                high_open: bool = False) -> None:
    """`key` must be a number in [low, high] (`low_open` / `high_open`: that end excluded)."""
    value = OmegaConf.select(cfg, key)
    ok = is_number(value) and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise GrainError(f"{show(key, value)} is not a number in {interval}; e.g. {example}")


def check_choice(cfg: DictConfig, key: str, choices, what: str = "") -> None:
    """`key` must be one of `choices` (`what`: a note on what they mean, appended)."""
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise GrainError(f"{show(key, value)}; expected one of {list(choices)}{what}")
