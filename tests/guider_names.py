"""Which registered guiders a suite checks."""

from omniguide.core.registry import GUIDERS


def core_guider_names() -> set[str]:
    """The core's guiders; the modalities' own (history, stg, nested, ...) are tested in their suites."""
    return {n for n in GUIDERS.names() if GUIDERS.get(n).__module__.startswith("omniguide.core.")}


def perturbing_guiders() -> set[str]:
    """The guiders that declare a module of the model to perturb (their extra branch costs a pass)."""
    from omniguide.core.needs import MODULES
    from omniguide.core.registry import guiders_needing

    return set(guiders_needing(*MODULES))
