"""VTFusion's trainable heads on the frozen CLIP backbone (:mod:`vtfusion.backbone`).

* :mod:`~vtfusion.model.aie`: adaptive image encoder (linear maps + feature adaptor);
* :mod:`~vtfusion.model.prototypes`: prototype bank, NFC/AFS losses, vision map (Eqs. 1-5);
* :mod:`~vtfusion.model.ate`: adaptive text encoder and text map (Eq. 6);
* :mod:`~vtfusion.model.mpf`: multimodal prediction fusion (Eqs. 7-9).

Shapes across the modules (ViT-B-16-plus-240 at 240 px, layers (3, 6, 9, 12))::

    images   B x 3 x 240 x 240      in [0, 1]
    tokens   B x 4 x 15 x 15 x 896  FrozenCLIP(images)
    F^v      B x 4 x 640 x 15 x 15  AdaptiveImageEncoder(tokens)
    M^v      B x 1 x 15 x 15        PrototypeBank(F^v)            (Eq. 5)
    F^t      2 x 640                AdaptiveTextEncoder.text_features(object word, backbone)
    M^t      B x 1 x 15 x 15        text_map(F^v, F^t)             (Eq. 6)
"""

from vtfusion.model.aie import AdaptiveImageEncoder, AIEConfig, ConvAdaptor, LinearMap
from vtfusion.model.ate import (
    AdaptiveTextEncoder,
    ATEConfig,
    TextAdapter,
    ensemble_embedding,
    text_map,
    text_probabilities,
)
from vtfusion.model.prototypes import (
    PrototypeBank,
    PrototypeConfig,
    adapt_image_encoder,
    afs_loss,
    build_prototypes,
    mask_to_grid,
    nearest_prototype,
    nfc_loss,
    stack_levels,
    vision_map,
)

__all__ = [
    "AIEConfig", "ATEConfig", "AdaptiveImageEncoder", "AdaptiveTextEncoder", "ConvAdaptor", "LinearMap",
    "PrototypeBank", "PrototypeConfig", "TextAdapter", "adapt_image_encoder", "afs_loss", "build_prototypes",
    "ensemble_embedding", "mask_to_grid", "nearest_prototype", "nfc_loss", "stack_levels", "text_map",
    "text_probabilities", "vision_map",
]
