"""FineGrainedAD (Fan et al., "Towards Fine-Grained Vision-Language Alignment for Few-Shot
Anomaly Detection"): multi-level learnable prompts aligned to image regions, on the frozen
backbone of this package.

Written from the paper's description (Sec. 3, Figs. 2-3), with the published code
(RetoFan233/FineGrainedAD, built on PromptAD) read to settle what the text leaves open;
no code is copied. The summary this project has of the paper names six equations but
does not print them, so the equation labels below, **Eq. (FG-1) ... (FG-6), are this
project's numbering**, in the order of the method section:

* (FG-1) **MLLP**, multi-level learnable prompts (:class:`MultiLevelPrompts`): every level
  unit (the object, each component, the background) gets normal prompts
  ``[SOS] [V]_1..[V]_n <caption>.`` with shared learnable context tokens ``[V]``, and two
  kinds of abnormal prompts: the **replacement** mechanism puts the unit's phrase into a
  defect state (``"rim" -> "rim with a small chip"``, or a region word swapped for a
  contrasting one) and the **concatenation** mechanism appends learnable abnormal tokens
  ``[A]`` after the normal context (``[SOS] [V].. [A].. <caption>.``).
* (FG-2) **MLSA, language-guided region aggregation and dynamic prompt-region matching**
  (:func:`aggregate_regions`): the shots' tokens are described by their cosine similarity
  to the units' normal prompts; density-peak clustering (DPC-kNN) splits them first into
  foreground and background, then the foreground into one region per component; each
  component prompt is matched to the region whose mean token is most similar to it.
* (FG-3) the **token-prompt alignment loss** (:func:`alignment_loss`): every (region
  weighted) normal shot token is classified as its unit's normal prompt against the
  unit's abnormal prompts.
* (FG-4) the **triplet loss** (:func:`triplet_loss`) pulling tokens to the normal prompt
  and away from the abnormal one.
* (FG-5) the **multi-level consistency losses**: the two abnormal prompt kinds of a unit
  agree (:func:`context_match_loss`) and the object-level abnormal prompt equals the sum
  of the component-level ones plus the background (:func:`compositional_loss`).
* (FG-6) **inference** (:func:`token_wise_text_map`, :func:`visual_map`, :func:`fuse_maps`):
  each test token is scored by the unit whose normal prompt it is closest to (dynamic
  token-wise inference, the PAD branch), the VAD branch compares tokens with the shots'
  tokens, and the two maps are fused by their harmonic mean.

Every ambiguity is a field of :class:`FineGrainedADConfig` marked **[choice]**.
Shapes: ``k`` shots, ``N = h * w`` tokens, ``E`` the joint embedding width, ``W`` the text
width, ``U`` prompt units, ``P`` prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vtfusion.data.captions import CategoryCaptions

#: Contrasting words for the replacement mechanism at the region level **[choice]**: the
#: first one not among a component's own words replaces its first word.
CONTRAST_WORDS: dict[str, tuple[str, ...]] = {
    "color": ("red", "purple", "yellow", "white", "black"),
    "texture": ("cracked", "stained", "scratched", "rough"),
    "shape": ("bent", "broken", "torn", "dented"),
}
IMAGE_UNIT = "object"
BACKGROUND_UNIT = "background"
NORMAL, REPLACED, CONCATENATED = 0, 1, 2  # the kinds of prompt


@dataclass(frozen=True)
class FineGrainedADConfig:
    """Options of FineGrainedAD (defaults: the published code's, where it has one).

    Attributes:
        n_ctx: learnable normal context tokens per prompt (code: 4).
        n_ctx_abnormal: learnable abnormal tokens of a concatenated prompt (code: 1).
        n_abnormal_sets: sets of learnable abnormal tokens (code ``n_pro_ab``: 4).
        region_prompts: **[choice]** add each component's level-3 region phrase
            (``"<color> <texture> <shape> <name>"``) as a second normal prompt of its unit,
            and its attribute-swapped versions as replaced abnormal prompts (the code adds
            attribute prompts to the object prompt with learned weights instead).
        epochs: optimisation steps, one per pass over the k shots (code: 100 epochs). The
            **last iterate** is evaluated: the published code keeps the epoch with the best
            *test* AUROC, which this project does not do.
        lr, momentum, weight_decay, min_lr: SGD with a cosine schedule to ``min_lr``
            (code: lr 0.002, momentum 0.9, eta_min 1e-5; weight decay **[choice]** 5e-4).
        logit_scale: **[choice]** softmax temperature of every token-prompt score; 100 is
            CLIP's trained scale (the code multiplies by its model's ``logit_scale``
            attribute, whose value depends on its CLIP fork).
        triplet_margin: margin of Eq. (FG-4) on squared distances of unit vectors (code: 1.0).
        lambda_match: weight of the context-match part of Eq. (FG-5) **[choice]** 0.001
            (PromptAD's default; the code's value is a command-line argument).
        region_boost: a token of a prompt's matched region weighs ``1 + region_boost`` in the
            alignment losses (code: 1.5).
        region_weighting: **[choice]** ``feature``: the weight multiplies the token feature
            before the losses (as the code); ``loss``: it weights each token's loss.
        cluster_k: neighbours of the DPC-kNN density, (foreground/background, components)
            (code: 8 and 5).
        matching: **[choice]** ``argmax`` (each component its most similar region, as the
            code; two may share one) or ``hungarian`` (one region per component).
        text_level: which configured backbone level gives the tokens of the PAD branch
            (-1: the last; the code uses its last V-V attention output).
        memory_levels: the levels of the VAD branch's memory (code: the last two).
        fusion: **[choice]** ``harmonic``: the harmonic mean of the text and visual maps
            (the code's ``1 / (1/t + 1/v)`` is half of it: the same ranking); ``mean``.
        train_seed_offset: added to the cell's seed for the prompt initialisation.
    """

    n_ctx: int = 4
    n_ctx_abnormal: int = 1
    n_abnormal_sets: int = 4
    region_prompts: bool = True
    epochs: int = 100
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_lr: float = 1e-5
    logit_scale: float = 100.0
    triplet_margin: float = 1.0
    lambda_match: float = 0.001
    region_boost: float = 1.5
    region_weighting: str = "feature"
    cluster_k: tuple[int, int] = (8, 5)
    matching: str = "argmax"
    text_level: int = -1
    memory_levels: tuple[int, ...] = (-2, -1)
    fusion: str = "harmonic"
    train_seed_offset: int = 0

    def __post_init__(self) -> None:
        if min(self.n_ctx, self.n_ctx_abnormal, self.n_abnormal_sets, self.epochs) < 1:
            raise ValueError("FineGrainedADConfig: n_ctx, n_ctx_abnormal, n_abnormal_sets and epochs must be >= 1")
        if self.region_weighting not in ("feature", "loss"):
            raise ValueError(f"FineGrainedADConfig.region_weighting must be feature or loss, "
                             f"got {self.region_weighting!r}")
        if self.matching not in ("argmax", "hungarian"):
            raise ValueError(f"FineGrainedADConfig.matching must be argmax or hungarian, got {self.matching!r}")
        if self.fusion not in ("harmonic", "mean"):
            raise ValueError(f"FineGrainedADConfig.fusion must be harmonic or mean, got {self.fusion!r}")
        if len(self.cluster_k) != 2 or min(self.cluster_k) < 1 or not self.memory_levels:
            raise ValueError("FineGrainedADConfig: cluster_k is two neighbour counts >= 1; memory_levels non-empty")


# ---------------------------------------------------------------------------------------
# (FG-1) MLLP: the prompts of every level unit
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptUnit:
    """The texts of one level unit: its normal texts and its replaced abnormal texts."""

    name: str
    level: str  # "object", "component" or "background"
    normal: tuple[str, ...]
    replaced: tuple[str, ...]


def _contrast(words: tuple[str, ...], attr: str) -> str:
    return next(w for w in CONTRAST_WORDS[attr] if w not in words)


def build_units(captions: CategoryCaptions, region_prompts: bool = True) -> list[PromptUnit]:
    """The level units of a category and their texts, Eq. (FG-1)'s replacement mechanism.

    Units: the object (its caption; the object phrase put into each defect state), each
    component (its caption, plus its region phrase when ``region_prompts``; the name put
    into each defect state, and the region phrase with one attribute word swapped for a
    contrasting one) and, when the category has one, the background.
    """
    units = [PromptUnit(IMAGE_UNIT, "object", (captions.caption,),
                        tuple(captions.caption.replace(captions.object, d.format(captions.object), 1)
                              for d in captions.defects))]
    for comp in captions.components:
        normal = [comp.caption]
        replaced = [comp.caption.replace(comp.name, d.format(comp.name), 1) for d in captions.defects]
        if region_prompts:
            region = comp.region_phrase()
            normal.append(region)
            for attr in ("color", "texture", "shape"):
                words = getattr(comp, attr)
                replaced.append(region.replace(words[0], _contrast(words, attr), 1))
        units.append(PromptUnit(comp.name, "component", tuple(normal), tuple(replaced)))
    if captions.background_phrase is not None:
        bg = captions.background_phrase
        units.append(PromptUnit(BACKGROUND_UNIT, "background", (bg,), tuple(d.format(bg) for d in captions.defects)))
    return units


def encode_prompt_embeddings(clip: nn.Module, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower on given token embeddings (learnable ones among them).

    ``embeddings``: ``P x T x W`` (``token_embedding`` output, some rows replaced),
    ``token_ids``: ``P x T`` the ids they stand for (the end token, the largest id, marks
    where the sentence embedding is read). Returns ``P x E`` (not normalised); equal to
    ``clip.encode_text(token_ids)`` when nothing is replaced. The causal mask lets the
    sequences be cut after the last end token, which changes nothing and saves time.
    """
    if getattr(clip, "text_pool_type", "argmax") != "argmax":
        raise ValueError("FineGrainedAD's prompts need a CLIP text tower pooled at the end token (argmax)")
    eot = token_ids.argmax(dim=-1)
    length = int(eot.max()) + 1
    x = embeddings[:, :length] + clip.positional_embedding[:length].to(embeddings.dtype)
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class MultiLevelPrompts(nn.Module):
    """Eq. (FG-1): the learnable multi-level prompts of one category.

    Parameters: ``normal_ctx`` (``n_ctx x W``, shared by every prompt **[choice]**, as
    the code) and ``abnormal_ctx`` (``n_abnormal_sets x n_ctx_abnormal x W``). Buffers: the
    frozen token embeddings around them. ``forward()`` -> ``P x E`` normalised prompt
    embeddings; :attr:`unit` (``P``) and :attr:`kind` (``P``: :data:`NORMAL`,
    :data:`REPLACED`, :data:`CONCATENATED`) say what each row is.

    Args:
        clip: the frozen open_clip model (its text tower encodes; it is not a submodule).
        tokenize: ``list[str] -> P x T`` token ids (the backbone's tokenizer).
        units: :func:`build_units`.
    """

    def __init__(self, clip: nn.Module, tokenize, units: list[PromptUnit], cfg: FineGrainedADConfig,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.__dict__["clip"] = clip  # frozen and shared: kept out of parameters and state_dict
        self.units = units
        n, m = cfg.n_ctx, cfg.n_ctx_abnormal
        width = clip.token_embedding.weight.shape[1]
        dtype = clip.token_embedding.weight.dtype
        self.normal_ctx = nn.Parameter(torch.randn(n, width, generator=generator, dtype=dtype) * 0.02)
        self.abnormal_ctx = nn.Parameter(
            torch.randn(cfg.n_abnormal_sets, m, width, generator=generator, dtype=dtype) * 0.02)
        plain, plain_unit, plain_kind = [], [], []
        for i, u in enumerate(units):
            for text, kind in [(t, NORMAL) for t in u.normal] + [(t, REPLACED) for t in u.replaced]:
                plain.append(text)
                plain_unit.append(i)
                plain_kind.append(kind)
        concat = [(i, t, s) for i, u in enumerate(units) for t in u.normal for s in range(cfg.n_abnormal_sets)]
        ids = tokenize([" ".join(["X"] * n + [t]) + "." for t in plain])
        cids = tokenize([" ".join(["X"] * (n + m) + [t]) + "." for _, t, _ in concat])
        with torch.no_grad():
            emb, cemb = clip.token_embedding(ids), clip.token_embedding(cids)
        self.register_buffer("plain_ids", ids, persistent=False)
        self.register_buffer("plain_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("plain_suffix", emb[:, 1 + n:].clone(), persistent=False)
        self.register_buffer("concat_ids", cids, persistent=False)
        self.register_buffer("concat_prefix", cemb[:, :1].clone(), persistent=False)
        self.register_buffer("concat_suffix", cemb[:, 1 + n + m:].clone(), persistent=False)
        self.register_buffer("concat_set", torch.tensor([s for _, _, s in concat]), persistent=False)
        self.register_buffer("unit", torch.tensor(plain_unit + [i for i, _, _ in concat]), persistent=False)
        self.register_buffer("kind", torch.tensor(plain_kind + [CONCATENATED] * len(concat)), persistent=False)
        self.texts = plain + [" ".join(["[V]"] * n + [f"[A{s}]"] * m + [t]) for _, t, s in concat]

    @property
    def n_units(self) -> int:
        return len(self.units)

    def describe(self, per_kind: int = 2) -> str:
        """A few prompts of each unit and kind, as text (``[V]``: a learnable normal token,
        ``[As]``: a learnable abnormal token of set ``s``)."""
        names = {NORMAL: "normal", REPLACED: "replaced", CONCATENATED: "concatenated"}
        lines = []
        for u, unit in enumerate(self.units):
            lines.append(f"{unit.level} '{unit.name}':")
            for kind, name in names.items():
                rows = [i for i in range(len(self.texts)) if self.unit[i] == u and self.kind[i] == kind]
                shown = [self.texts[i] if kind == CONCATENATED else "[V] " * self.normal_ctx.shape[0] + self.texts[i]
                         for i in rows[:per_kind]]
                lines += [f"  {name:12s} {t}" for t in shown] + ([f"  {'':12s} ... {len(rows)} in all"]
                                                                 if len(rows) > per_kind else [])
        return "\n".join(lines)

    def forward(self) -> torch.Tensor:
        """``P x E`` L2-normalised embeddings of every prompt (Eq. FG-1)."""
        p, c = self.plain_prefix.shape[0], self.concat_prefix.shape[0]
        plain = torch.cat([self.plain_prefix, self.normal_ctx.expand(p, -1, -1), self.plain_suffix], dim=1)
        concat = torch.cat([self.concat_prefix, self.normal_ctx.expand(c, -1, -1),
                            self.abnormal_ctx[self.concat_set], self.concat_suffix], dim=1)
        feats = encode_prompt_embeddings(self.clip, torch.cat([plain, concat]),
                                         torch.cat([self.plain_ids, self.concat_ids]))
        return F.normalize(feats.float(), dim=-1)


def unit_embeddings(features: torch.Tensor, unit: torch.Tensor, kind: torch.Tensor, n_units: int) -> torch.Tensor:
    """``U x 2 x E``: per unit the normalised mean of its normal prompts and of all its
    abnormal prompts (replaced and concatenated), the class embeddings of Eq. (FG-6)."""
    rows = []
    for u in range(n_units):
        mine = unit == u
        normal = features[mine & (kind == NORMAL)].mean(0)
        abnormal = features[mine & (kind != NORMAL)].mean(0)
        rows.append(torch.stack([normal, abnormal]))
    return F.normalize(torch.stack(rows), dim=-1)


# ---------------------------------------------------------------------------------------
# (FG-2) MLSA: language-guided region aggregation, dynamic prompt-region matching
# ---------------------------------------------------------------------------------------
def dpc_knn(x: torch.Tensor, n_clusters: int, k: int) -> torch.Tensor:
    """Density-peak clustering with k-nearest-neighbour density (DPC-kNN, as TCFormer's CTM).

    ``x``: ``N x C`` points -> ``N`` cluster labels in ``0..n_clusters-1``. Density
    ``rho_i = exp(-mean_j d_ij^2)`` over the ``k`` nearest neighbours; ``delta_i`` the
    distance to the nearest denser point (the largest distance for the densest); the
    ``n_clusters`` points of largest ``rho * delta`` are the centres, every point joins its
    nearest centre. Deterministic (ties broken by index).
    """
    n = x.shape[0]
    n_clusters = max(1, min(n_clusters, n))
    d = torch.cdist(x.float(), x.float()) / math.sqrt(max(x.shape[1], 1))
    knn = d.topk(min(k + 1, n), dim=-1, largest=False).values  # includes the point itself
    rho = torch.exp(-(knn ** 2).mean(-1)) - torch.arange(n, dtype=d.dtype) * 1e-9
    denser = rho[None, :] > rho[:, None]
    dmax = d.max()
    delta = torch.where(denser, d, dmax.expand_as(d)).amin(-1)
    centres = (rho * delta).topk(n_clusters).indices
    labels = d[:, centres].argmin(-1)
    labels[centres] = torch.arange(n_clusters)
    return labels


@dataclass
class RegionAssignment:
    """What Eq. (FG-2) finds on the shots.

    Attributes:
        labels: ``k x N`` region of every shot token (``0..C-1`` foreground regions,
            ``C`` the background).
        matched: ``k x U`` the region each unit is aligned to in each shot (-1: all tokens,
            the object unit).
        weights: ``U x k x N`` the token weights of the alignment losses.
    """

    labels: torch.Tensor
    matched: torch.Tensor
    weights: torch.Tensor


def _match(sim: torch.Tensor, how: str) -> torch.Tensor:
    """Region of each component from its ``C x R`` similarities: ``argmax`` or ``hungarian``."""
    if how == "argmax":
        return sim.argmax(-1)
    from scipy.optimize import linear_sum_assignment  # local: scipy is needed only for this option

    rows, cols = linear_sum_assignment(-sim.detach().cpu().numpy())
    out = sim.argmax(-1)  # a component left without a region (more components than regions) keeps its best
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return out


def aggregate_regions(tokens: torch.Tensor, unit_normal: torch.Tensor, units: list[PromptUnit],
                      cfg: FineGrainedADConfig) -> RegionAssignment:
    """Eq. (FG-2): language-guided region aggregation and dynamic prompt-region matching.

    ``tokens``: ``k x N x E`` normalised shot tokens; ``unit_normal``: ``U x E`` the units'
    normal prompt embeddings. Each token is described by its cosine similarity to the
    component and background prompts (the language-guided space); per shot, DPC-kNN
    (:func:`dpc_knn`) splits the tokens into foreground and background (the cluster more
    similar to the background prompt is the background), then the foreground into one
    region per component. In each shot, each component prompt is matched to the foreground
    region whose mean token is most similar to it (``cfg.matching``; per shot because the
    clusters of two shots are not numbered alike; the published code matches on its first
    shot's regions and applies the indices to every shot), the background prompt to the
    background; a matched token weighs ``1 + cfg.region_boost``, any other 1.
    """
    k, n, _ = tokens.shape
    comp_idx = [i for i, u in enumerate(units) if u.level == "component"]
    bg_idx = [i for i, u in enumerate(units) if u.level == "background"]
    guide = unit_normal[comp_idx + bg_idx]  # (C [+1]) x E
    n_comp = len(comp_idx)
    labels = torch.full((k, n), n_comp, dtype=torch.long)
    for s in range(k):
        space = tokens[s] @ guide.T  # N x (C [+1]): the language-guided description
        fg = torch.ones(n, dtype=torch.bool)
        if bg_idx:
            two = dpc_knn(space, 2, cfg.cluster_k[0])
            bg_sim = torch.stack([space[two == c, -1].mean() if (two == c).any() else space.new_tensor(-2.0)
                                  for c in range(2)])
            fg = two != int(bg_sim.argmax())
            if not fg.any():
                fg = torch.ones(n, dtype=torch.bool)
        labels[s, fg] = dpc_knn(space[fg], n_comp, cfg.cluster_k[1])
    matched = torch.full((k, len(units)), -1, dtype=torch.long)
    weights = torch.ones(len(units), k, n)
    for s in range(k):  # clusters are found per shot, so region r of two shots need not be one part
        means = torch.stack([tokens[s, labels[s] == r].mean(0) if (labels[s] == r).any()
                             else tokens.new_zeros(tokens.shape[-1]) for r in range(n_comp)])
        sim = unit_normal[comp_idx] @ F.normalize(means, dim=-1).T  # C x C (components x regions)
        matched[s, comp_idx] = _match(sim, cfg.matching)
        if bg_idx:
            matched[s, bg_idx] = n_comp
        for u in range(len(units)):
            if matched[s, u] >= 0:
                weights[u, s] += cfg.region_boost * (labels[s] == matched[s, u]).float()
    return RegionAssignment(labels, matched, weights)


# ---------------------------------------------------------------------------------------
# (FG-3)-(FG-5) the multi-level alignment losses
# ---------------------------------------------------------------------------------------
def alignment_loss(tokens: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor, scale: float,
                   weights: torch.Tensor | None = None, weighting: str = "feature") -> torch.Tensor:
    """Eq. (FG-3): cross-entropy of every normal token being its unit's normal prompt.

    ``tokens``: ``k x N x E`` normalised; ``normal``: ``E`` the unit's normal embedding
    (normalised mean of its normal prompts); ``abnormal``: ``A x E`` its abnormal prompts.
    Logits ``scale * <w f, [normal, abnormal_1..A]>``, target the normal column; ``weights``
    (``k x N``) multiply the features (``weighting="feature"``) or the per-token losses
    (``"loss"``, a weighted mean).
    """
    w = torch.ones(tokens.shape[:2], device=tokens.device) if weights is None else weights.to(tokens.device)
    feats = tokens * w[..., None] if weighting == "feature" else tokens
    logits = scale * feats @ torch.cat([normal[None], abnormal]).T  # k x N x (1 + A)
    per_token = F.cross_entropy(logits.flatten(0, 1), logits.new_zeros(logits.shape[0] * logits.shape[1],
                                                                        dtype=torch.long), reduction="none")
    if weighting == "feature":
        return per_token.mean()
    return (per_token * w.flatten()).sum() / w.sum()


def triplet_loss(tokens: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor, margin: float,
                 weights: torch.Tensor | None = None, weighting: str = "feature") -> torch.Tensor:
    """Eq. (FG-4): ``mean max(0, ||f - n||^2 - ||f - a||^2 + margin)`` over the tokens ``f``.

    ``normal``, ``abnormal``: ``E`` the unit's normal and abnormal embeddings (normalised
    means); ``weights`` as in :func:`alignment_loss`.
    """
    w = torch.ones(tokens.shape[:2], device=tokens.device) if weights is None else weights.to(tokens.device)
    feats = tokens * w[..., None] if weighting == "feature" else tokens
    per_token = F.relu(((feats - normal) ** 2).sum(-1) - ((feats - abnormal) ** 2).sum(-1) + margin)
    if weighting == "feature":
        return per_token.mean()
    return (per_token * w).sum() / w.sum()


def context_match_loss(replaced: torch.Tensor, concatenated: torch.Tensor) -> torch.Tensor:
    """Eq. (FG-5), first part: ``||mean(replaced) - mean(concatenated)||^2``, the two abnormal
    prompt kinds of a unit (``R x E``, ``Q x E``, normalised rows) agree on average."""
    return ((replaced.mean(0) - concatenated.mean(0)) ** 2).sum()


def compositional_loss(object_abnormal: torch.Tensor, component_abnormal: list[torch.Tensor],
                       background_normal: torch.Tensor | None) -> torch.Tensor:
    """Eq. (FG-5), second part: the object's abnormal prompt is the composition of its parts,
    ``|| mean(a_obj) - mean(norm(sum_c a_c)) - mean(n_bg) ||``.

    ``object_abnormal``: ``Q x E`` the object unit's concatenated abnormal prompts;
    ``component_abnormal``: per component its ``Q x E`` concatenated abnormal prompts
    (summed row by row, then normalised); ``background_normal``: ``B x E`` (None: no background).
    """
    parts = F.normalize(torch.stack(component_abnormal).sum(0), dim=-1).mean(0)
    residual = object_abnormal.mean(0) - parts
    if background_normal is not None:
        residual = residual - background_normal.mean(0)
    return residual.norm()


def multilevel_loss(features: torch.Tensor, prompts: MultiLevelPrompts, tokens: torch.Tensor,
                    regions: RegionAssignment, cfg: FineGrainedADConfig) -> dict[str, torch.Tensor]:
    """The training objective: Eqs. (FG-3) and (FG-4) for every unit (region-weighted),
    ``lambda_match`` times Eq. (FG-5)'s match part for every unit, and its compositional part.

    ``features``: ``P x E`` of ``prompts()``; ``tokens``: ``k x N x E`` normalised shot tokens.
    Returns the parts and their ``total``.
    """
    unit, kind = prompts.unit, prompts.kind
    emb = unit_embeddings(features, unit, kind, prompts.n_units)
    align = trip = match = features.new_zeros(())
    for u in range(prompts.n_units):
        w = regions.weights[u]
        abn = features[(unit == u) & (kind != NORMAL)]
        align = align + alignment_loss(tokens, emb[u, 0], abn, cfg.logit_scale, w, cfg.region_weighting)
        trip = trip + triplet_loss(tokens, emb[u, 0], emb[u, 1], cfg.triplet_margin, w, cfg.region_weighting)
        match = match + context_match_loss(features[(unit == u) & (kind == REPLACED)],
                                           features[(unit == u) & (kind == CONCATENATED)])
    comps = [u for u, x in enumerate(prompts.units) if x.level == "component"]
    bgs = [u for u, x in enumerate(prompts.units) if x.level == "background"]
    concat = [features[(unit == u) & (kind == CONCATENATED)] for u in comps]
    n_concat = min(c.shape[0] for c in concat)
    comp_loss = compositional_loss(features[(unit == 0) & (kind == CONCATENATED)],
                                   [c[:n_concat] for c in concat],
                                   features[(unit == bgs[0]) & (kind == NORMAL)] if bgs else None)
    total = align + trip + cfg.lambda_match * match + comp_loss
    return {"total": total, "alignment": align, "triplet": trip, "match": match, "compositional": comp_loss}


# ---------------------------------------------------------------------------------------
# (FG-6) inference: token-wise text map, visual comparison, fusion
# ---------------------------------------------------------------------------------------
def token_wise_text_map(tokens: torch.Tensor, units: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (FG-6), PAD branch: dynamic token-wise inference.

    ``tokens``: ``B x N x E`` normalised; ``units``: ``U x 2 x E`` (normal, abnormal)
    embeddings. Each token is assigned the unit whose normal embedding is most similar
    to it **[choice]** (the code matches through an extra query module that no loss
    trains), then scored ``softmax(scale * <f, [n_u, a_u]>)[abnormal]``.
    Returns ``B x N`` abnormal probabilities and ``B x N`` the chosen units.
    """
    chosen = (tokens @ units[:, 0].T).argmax(-1)  # B x N
    pair = units[chosen]  # B x N x 2 x E
    logits = scale * (tokens[..., None, :] * pair).sum(-1)
    return logits.softmax(-1)[..., 1], chosen


def visual_map(tokens: list[torch.Tensor], memory: list[torch.Tensor]) -> torch.Tensor:
    """Eq. (FG-6), VAD branch: ``mean_levels min_m (1 - <f, m>) / 2`` over the shots' tokens.

    ``tokens``: per level ``B x N x E`` normalised; ``memory``: per level ``M x E``.
    Returns ``B x N``.
    """
    maps = [((1 - t @ m.T) / 2).amin(-1) for t, m in zip(tokens, memory)]
    return torch.stack(maps).mean(0)


def fuse_maps(text: torch.Tensor, visual: torch.Tensor, fusion: str = "harmonic", eps: float = 1e-6) -> torch.Tensor:
    """Eq. (FG-6), fusion of the two branches: ``2 / (1/t + 1/v)`` (``harmonic``) or ``(t + v) / 2``."""
    if fusion == "mean":
        return (text + visual) / 2
    return 2.0 / (1.0 / text.clamp_min(eps) + 1.0 / visual.clamp_min(eps))


# ---------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------
@dataclass
class FitRecord:
    """What a fit recorded: the loss parts per step, the regions found, the seconds."""

    history: list[dict[str, float]] = field(default_factory=list)
    matched: list[list[int]] = field(default_factory=list)
    regions: list[list[int]] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    monitor: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``history`` (loss parts per step), ``matched_regions`` (per shot and unit,
        -1: all tokens), ``regions`` (``k x N`` region of each shot token), ``units`` (their
        names), ``monitor`` (the validation numbers, when watched)."""
        return {"history": self.history, "matched_regions": self.matched, "regions": self.regions,
                "units": self.units, "monitor": self.monitor, "seconds": self.seconds}


class FineGrainedAD(nn.Module):
    """FineGrainedAD on a frozen :class:`~vtfusion.backbone.FrozenCLIP`: prompts, memory, maps.

    ``forward_tokens(tokens)``: ``B x L x h x w x D`` backbone tokens -> ``final``,
    ``text`` and ``vision`` maps ``B x h x w`` (before upsampling) and ``score`` ``B``.

    Args:
        backbone: the frozen backbone (kept out of ``state_dict``).
        captions: the category's captions (:func:`vtfusion.data.captions.load_captions`).
        cfg: :class:`FineGrainedADConfig`.
        seed: seeds the prompt initialisation.
    """

    def __init__(self, backbone: nn.Module, captions: CategoryCaptions, cfg: FineGrainedADConfig,
                 seed: int = 0) -> None:
        super().__init__()
        levels = backbone.num_levels
        wanted = (cfg.text_level, *cfg.memory_levels)
        if any(not -levels <= lv < levels for lv in wanted):
            raise ValueError(f"FineGrainedADConfig reads token levels {wanted} (text_level, memory_levels), but the "
                             f"backbone gives {levels} (BackboneConfig.layers={tuple(backbone.layers)}): read more "
                             f"blocks, e.g. --layers with two or more, or set memory_levels=(-1,)")
        self.__dict__["backbone"] = backbone
        self.cfg = cfg
        self.captions = captions
        gen = torch.Generator().manual_seed(seed + cfg.train_seed_offset)
        self.prompts = MultiLevelPrompts(backbone.clip, backbone.tokenize, build_units(captions, cfg.region_prompts),
                                         cfg, gen)
        e = backbone.embed_dim
        self.register_buffer("class_embeddings", torch.zeros(self.prompts.n_units, 2, e))
        self.register_buffer("memory", torch.zeros(len(cfg.memory_levels), 0, e))

    def level_tokens(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        """``B x L x h x w x D`` -> ``B x N x E``: one level, CLIP's projection, normalised."""
        return F.normalize(self.backbone.project_tokens(tokens[:, level].flatten(1, 2)).float(), dim=-1)

    def fit(self, tokens: torch.Tensor, progress: bool = False, monitor=None, monitor_every: int = 10) -> FitRecord:
        """Build the VAD memory and train the prompts on the k shots' tokens (``k x L x h x w x D``):
        Eq. (FG-2) once with the initial prompts (as the code, which aggregates regions at its
        first step), then ``cfg.epochs`` full-batch SGD steps on :func:`multilevel_loss`; the
        last iterate is kept. ``progress`` is accepted for the method interface and unused
        (the steps take seconds on the quick profile). ``monitor(model) -> dict``, when given,
        is called every ``monitor_every`` steps (validation numbers, never a choice of step)."""
        import time  # local: only the fit is timed

        start = time.perf_counter()
        cfg = self.cfg
        device = self.prompts.normal_ctx.device
        tokens = tokens.to(device)
        self.memory = torch.stack([self.level_tokens(tokens, lv).flatten(0, 1) for lv in cfg.memory_levels])
        shot = self.level_tokens(tokens, cfg.text_level)
        with torch.no_grad():
            feats = self.prompts()
            emb = unit_embeddings(feats, self.prompts.unit, self.prompts.kind, self.prompts.n_units)
        regions = aggregate_regions(shot.cpu(), emb[:, 0].cpu(), self.prompts.units, cfg)
        params = [self.prompts.normal_ctx, self.prompts.abnormal_ctx]
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.min_lr)
        record = FitRecord(matched=regions.matched.tolist(), regions=regions.labels.tolist(),
                           units=[u.name for u in self.prompts.units])
        regions.weights = regions.weights.to(device)
        for step in range(cfg.epochs):
            opt.zero_grad()
            parts = multilevel_loss(self.prompts(), self.prompts, shot, regions, cfg)
            parts["total"].backward()
            opt.step()
            sched.step()
            record.history.append({"step": step, **{k: float(v.detach()) for k, v in parts.items()}})
            if monitor is not None and (step + 1) % monitor_every == 0:
                self.update_class_embeddings()
                record.monitor.append({"step": step + 1, **monitor(self)})
        self.update_class_embeddings()
        record.seconds = time.perf_counter() - start
        return record

    @torch.no_grad()
    def update_class_embeddings(self) -> None:
        """``U x 2 x E`` normal / abnormal embeddings of every unit from the current prompts."""
        feats = self.prompts()
        self.class_embeddings = unit_embeddings(feats, self.prompts.unit, self.prompts.kind, self.prompts.n_units)

    @torch.no_grad()
    def forward_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. (FG-6) on a batch's tokens: ``text``, ``vision``, ``final`` (``B x h x w``),
        ``unit`` (``B x h x w`` the unit each token was scored by) and ``score`` (``B``, the
        final map's maximum **[choice]**: the cached tokens carry no class token)."""
        if self.memory.shape[1] == 0:
            raise RuntimeError("FineGrainedAD has no memory yet: fit it on the shots first")
        b, h, w = tokens.shape[0], tokens.shape[2], tokens.shape[3]
        text, unit = token_wise_text_map(self.level_tokens(tokens, self.cfg.text_level), self.class_embeddings,
                                         self.cfg.logit_scale)
        vision = visual_map([self.level_tokens(tokens, lv) for lv in self.cfg.memory_levels], list(self.memory))
        final = fuse_maps(text, vision, self.cfg.fusion)
        shape = (b, h, w)
        return {"text": text.reshape(shape), "vision": vision.reshape(shape), "final": final.reshape(shape),
                "unit": unit.reshape(shape), "score": final.amax(-1)}


__all__ = ["BACKGROUND_UNIT", "CONCATENATED", "CONTRAST_WORDS", "FineGrainedAD", "FineGrainedADConfig", "FitRecord",
           "IMAGE_UNIT", "MultiLevelPrompts", "NORMAL", "PromptUnit", "REPLACED", "RegionAssignment",
           "aggregate_regions", "alignment_loss", "build_units", "compositional_loss", "context_match_loss",
           "dpc_knn", "encode_prompt_embeddings", "fuse_maps", "multilevel_loss", "token_wise_text_map",
           "triplet_loss", "unit_embeddings", "visual_map"]
