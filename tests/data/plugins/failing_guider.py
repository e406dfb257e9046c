"""A test plugin (loaded with ``--plugin``): a guider that fails at a chosen step, so a test can
check that a rollout keeps the frames it wrote before the failure."""

from dataclasses import dataclass

from omniguide import GuidanceError, register_guider
from omniguide.modalities.video.history import HistoryGuidance


@register_guider("fail-after")
@dataclass
class FailAfter(HistoryGuidance):
    """Conditional history guidance that raises at its ``calls``-th combine."""

    scheme: str = "conditional"
    calls: int = 10

    def combine(self, preds, step):
        self.count = getattr(self, "count", 0) + 1
        if self.count >= self.calls:
            raise GuidanceError(f"fail-after: failing on purpose at call {self.count}")
        return super().combine(preds, step)
