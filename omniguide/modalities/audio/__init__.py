"""Audio: the text-to-audio pipeline families (Stable Audio, AudioLDM, AudioLDM2, MusicLDM),
MusicGen through a logits processor (:mod:`.musicgen`), guider presets of the audio papers
(:mod:`.presets`), WAV / spectrogram outputs (:mod:`.io`) and audio metrics (:mod:`.metrics`).
Importing this package registers the families and the presets."""

from . import audioldm, audioldm2, metrics, musicldm, presets, stable_audio  # noqa: F401  (each registers itself)
