"""Flux (``FluxPipeline``): a flow-matching transformer on packed latent tokens ``[B, L, C]``,
called with ``timestep / 1000``. FLUX.1-dev's ``guidance_scale`` is a distilled guidance
*embedding*, not CFG, so it stays the user's; the pipeline's true CFG (``true_cfg_scale`` with a
negative prompt) is what the guider replaces. Without a negative prompt the unconditional branch
is the empty prompt.

``encode_prompt(prompt, prompt_2, ...)`` takes no negative, so it runs twice (the pipeline does the
same for true CFG). The conditions are ``encoder_hidden_states``, ``pooled_projections`` and
``txt_ids``; ``img_ids`` and ``txt_ids`` have no batch dimension. Axes: reductions over tokens
and features; the token axis is a packed 2x2-patch sequence, so frequency methods (FDG, spectral
caches) see a 1-D sequence rather than the image plane."""

from __future__ import annotations

from ..base import Family, register_family

# the pipeline's negative arguments -> encode_prompt's arguments for the negative pass
_AS_PROMPT = {"negative_prompt": "prompt", "negative_prompt_2": "prompt_2", "negative_prompt_embeds": "prompt_embeds",
              "negative_pooled_prompt_embeds": "pooled_prompt_embeds"}


def encode(original, arguments: dict, negatives: dict):
    embeds, pooled, text_ids = original(**arguments)
    negative_arguments = {**arguments, "prompt": "", "prompt_2": None, "prompt_embeds": None,
                          "pooled_prompt_embeds": None}
    if isinstance(arguments.get("prompt"), (list, tuple)):
        negative_arguments["prompt"] = [""] * len(arguments["prompt"])
    negative_arguments.update({_AS_PROMPT[k]: v for k, v in negatives.items()})
    negative, negative_pooled, negative_ids = original(**negative_arguments)
    return ((embeds, pooled, text_ids),
            {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids},
            {"prompt_embeds": negative, "pooled_prompt_embeds": negative_pooled, "text_ids": negative_ids})


FLUX = register_family(Family(
    name="flux",
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline"),
    denoiser="transformer",
    sample="hidden_states",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds", "pooled_projections": "pooled_prompt_embeds",
                "txt_ids": "text_ids"},
    timestep_scale=1 / 1000,
    layout="BLD",
    cfg_scale=("true_cfg_scale",),
    cfg_off={"true_cfg_scale": 1.0},
    negatives=tuple(_AS_PROMPT),
    shared=frozenset({"img_ids", "txt_ids"}),
))
