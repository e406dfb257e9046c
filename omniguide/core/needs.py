"""What a guidance method needs of the model it guides or of its user, beyond what its driver
provides (:data:`omniguide.core.guider.REQUIREMENTS`): declared on the guider class as
``needs = {need: why}`` and asked of the registry (:func:`omniguide.core.registry.guiders_needing`,
:func:`~omniguide.core.registry.guiders_served`) wherever a list of "guiders that need X" is wanted.
A field that takes the needed object says so: ``field(metadata={"need": SCORER})``."""

SELF_ATTENTION = "self-attention"
CROSS_ATTENTION = "cross-attention"
BLOCKS = "blocks"
TIMESTEP_EMBEDDING = "timestep-embedding"
MODULES = (SELF_ATTENTION, CROSS_ATTENTION, BLOCKS, TIMESTEP_EMBEDDING)   # the module kinds methods perturb
SECOND_MODEL = "second-model"
SCORER = "scorer"
CLASSIFIER = "classifier"
NEGATIVE = "negative"
HISTORY = "history"
CONDITIONS = "conditions"
NEEDS = {
    SELF_ATTENTION: "a model with self-attention modules to perturb",
    CROSS_ATTENTION: "a model with cross- or joint-attention modules to perturb",
    BLOCKS: "a model built of blocks (transformer or UNet blocks) to perturb",
    TIMESTEP_EMBEDDING: "a model with a timestep embedding to perturb",
    SECOND_MODEL: "a second model (a weaker or a base version of the guided one)",
    SCORER: "a scorer of denoised samples (one score per sample)",
    CLASSIFIER: "a classifier of denoised samples (class logits)",
    NEGATIVE: "a negative condition (a branch named by the guider, 'negative' by default)",
    HISTORY: "a video model with per-frame noise levels and history frames",
    CONDITIONS: "branches for several named conditions",
}
