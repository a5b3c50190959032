"""moecomp's batched slimming methods against their references applied one matrix at a time.

Every test builds a batch of B small random matrices [B, out, in] (float32, seeded), runs moecomp's batched
function once, and compares each batch entry with the reference (llm-compressor / compressed-tensors, or the
slow moecomp reference in ``methods.pruning``) called on that entry alone.
"""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
from compressed_tensors.quantization import QuantizationArgs, fake_quantize
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify
from llmcompressor.modifiers.pruning.wanda import wanda_sparsify
from llmcompressor.observers import Observer
from torch import nn

from moecomp.compression.adapters import get_adapter
from moecomp.compression.methods.pruning import MagnitudeConfig, SparseGPTConfig, WandaConfig, magnitude_mask
from moecomp.compression.methods.quantization import FP8Config, GPTQConfig, RTNConfig
from moecomp.compression.slimming import dequant, gptq, magnitude, qparams, rtn, sparsegpt, wanda
from moecomp.compression.slimming.groups import layer_groups
from moecomp.compression.slimming.statistics import InputStats, attach_statistics
from tests.compression.tiny_moe import tiny_model

B, OUT, IN = 4, 24, 128
F32 = torch.float32  # scale_dtype of every call: float32 weights, float32 scales
TOKENS = 256  # a power of two: 2 / n is exact, so H = 2 S / n has one float32 value whichever way it is computed


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_weight(seed: int = 0, batch: int = B, rows: int = OUT, cols: int = IN) -> torch.Tensor:
    return torch.randn(batch, rows, cols, generator=generator(seed))


def correlated_inputs(seed: int = 1, batch: int = B, tokens: int = TOKENS, cols: int = IN) -> torch.Tensor:
    """[B, tokens, in]: Gaussian inputs mixed by a random matrix per entry (correlated features, varied scales)."""
    g = generator(seed)
    mixing = torch.randn(batch, cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scales = torch.rand(batch, 1, cols, generator=g) * 2 + 0.1
    return torch.randn(batch, tokens, cols, generator=g) @ mixing * scales


def stats_of(inputs: list[torch.Tensor], cols: int = IN) -> InputStats:
    """InputStats filled through ``add`` with each entry's inputs [n_b, in] (n_b may be 0)."""
    stats = InputStats(torch.zeros(len(inputs), cols, cols), torch.zeros(len(inputs), dtype=torch.long))
    for b, x in enumerate(inputs):
        if x.shape[0]:
            stats.add(b, x)
    return stats


def output_error(weight: torch.Tensor, slimmed: torch.Tensor, inputs: torch.Tensor) -> float:
    """mean over entries of ||(W - W') X^T||_F."""
    return float(torch.linalg.matrix_norm((weight - slimmed) @ inputs.transpose(1, 2)).mean())


def int_args(bits: int, group_size: int | None, actorder: str | None = None) -> QuantizationArgs:
    strategy = "channel" if group_size is None else "group"
    return QuantizationArgs(
        num_bits=bits, type="int", symmetric=True, strategy=strategy, group_size=group_size, actorder=actorder
    )


def observed(weight: torch.Tensor, args: QuantizationArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) of one matrix [out, in] from llm-compressor's weight observer."""
    observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=args)
    qparams = observer(weight).get_qparams()
    return qparams["scale"], qparams["zero_point"]


# ---------------------------------------------------------------------------------------------- statistics


def test_input_stats_match_direct_per_entry_hessians_and_norms() -> None:
    """InputStats.add / hessians / square_norms against H_b = 2 X_b^T X_b / n_b computed per entry."""
    g = generator(2)
    inputs = [torch.randn(n, IN, generator=g) for n in (37, 0, 5, 100)]
    stats = InputStats(torch.zeros(B, IN, IN), torch.zeros(B, dtype=torch.long))
    for b, x in enumerate(inputs):
        for chunk in x.split(16):  # several batches per entry, as the hooks add them
            stats.add(b, chunk)

    assert stats.counts.tolist() == [37, 0, 5, 100]
    assert stats.tokens(B) == [37, 0, 5, 100]
    hessians = stats.hessians(0, B)
    for b, x in enumerate(inputs):
        expected = 2 * x.T @ x / x.shape[0] if x.shape[0] else torch.zeros(IN, IN)
        torch.testing.assert_close(hessians[b], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats.square_norms()[b], x.square().sum(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.hessians(2, 4), hessians[2:4], rtol=0, atol=0)

    shared = InputStats(torch.zeros(1, IN, IN), torch.zeros(1, dtype=torch.long), shared=True)
    shared.add(0, inputs[3])
    assert shared.tokens(B) == [100] * B
    expected = 2 * inputs[3].T @ inputs[3] / 100
    torch.testing.assert_close(shared.hessians(1, 4), expected.expand(3, -1, -1), rtol=1e-5, atol=1e-5)


def routed_reference(experts: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor, all_experts: bool):
    """Slow per-expert loop: (gate_up sums, gate_up counts, down sums, down counts, routed hits)."""
    num = experts.gate_up_proj.shape[0]
    gate_up, gate_up_n, down, down_n, hits = [], [], [], [], []
    for e in range(num):
        routed = (top_k_index == e).any(dim=-1)
        hits.append(int((top_k_index == e).sum()))
        x = hidden if all_experts else hidden[routed]
        w_gate, w_up = experts.gate_up_proj[e].chunk(2, dim=0)
        h = experts.act_fn(x @ w_gate.T) * (x @ w_up.T)
        gate_up.append(x.T @ x)
        gate_up_n.append(x.shape[0])
        down.append(h.T @ h)
        down_n.append(h.shape[0])
    return torch.stack(gate_up), gate_up_n, torch.stack(down), down_n, hits


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("all_experts", [False, True])
@torch.no_grad()
def test_attach_statistics_on_fused_experts_matches_per_expert_loop(model_type: str, all_experts: bool) -> None:
    """attach_statistics hooks on a real fused experts module against a slow per-expert loop over routed tokens."""
    model = tiny_model(model_type, num_hidden_layers=1)
    layer = model.model.layers[0]
    groups = layer_groups(layer, get_adapter(model.config), ["routed_experts"])
    assert [g.name for g in groups] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    hidden = torch.randn(3, 16, model.config.hidden_size, generator=generator(3))

    stats, handles = attach_statistics(layer, groups, all_experts, torch.device("cpu"))
    layer.mlp(hidden)
    for handle in handles:
        handle.remove()

    flat = hidden.reshape(-1, hidden.shape[-1])
    _, _, top_k_index = layer.mlp.gate(flat)
    gate_up, gate_up_n, down, down_n, hits = routed_reference(layer.mlp.experts, flat, top_k_index, all_experts)
    assert min(hits) > 0 and len(set(hits)) > 1  # routing is neither empty nor uniform: the check means something

    assert stats.routed_tokens.tolist() == hits
    got_gate_up, got_down = stats.by_group["mlp.experts.gate_up_proj"], stats.by_group["mlp.experts.down_proj"]
    assert got_gate_up.shared is all_experts
    experts = len(hits)
    torch.testing.assert_close(got_gate_up.sums.expand(experts, -1, -1), gate_up, rtol=1e-5, atol=1e-6)
    assert got_gate_up.tokens(experts) == gate_up_n
    torch.testing.assert_close(got_down.sums, down, rtol=1e-5, atol=1e-9)
    assert got_down.counts.tolist() == down_n
    if not all_experts:
        assert gate_up_n == hits  # top-k experts of a token are distinct


def input_major_reference(model_type: str, moe: nn.Module, hidden: torch.Tensor, all_experts: bool):
    """The same per-expert loop written from each family's modeling code: gpt-oss routes top-k tokens to experts
    whose down input is (clamp(up) + 1) * clamp(gate) * sigmoid(alpha * gate) of x W + b (gate and up interleaved);
    Llama 4 runs every expert on every token scaled by its top-1 sigmoid score, so its routed tokens are those with
    a non-zero score. Weights are input-major ([E, H, 2I], [E, I, H])."""
    experts = moe.experts
    num = experts.gate_up_proj.shape[0]
    if model_type == "gpt_oss":
        _, _, top_k_index = moe.router(hidden)
        inputs = [hidden[(top_k_index == e).any(dim=-1)] for e in range(num)]
    else:
        scores, _ = moe.router(hidden)  # [T, E], zero where not chosen
        inputs = [(hidden * scores[:, e : e + 1])[scores[:, e] > 0] for e in range(num)]
    hits = [x.shape[0] for x in inputs]
    gate_up, down = [], []
    for e in range(num):
        x = hidden if all_experts else inputs[e]
        h = x @ experts.gate_up_proj[e]
        if model_type == "gpt_oss":
            h = h + experts.gate_up_proj_bias[e]
            gate, up = h[:, 0::2].clamp(max=experts.limit), h[:, 1::2].clamp(-experts.limit, experts.limit)
            act = (up + 1) * gate * torch.sigmoid(gate * experts.alpha)
        else:
            gate, up = h.chunk(2, dim=-1)
            act = experts.act_fn(gate) * up
        gate_up.append(x.T @ x)
        down.append(act.T @ act)
    return torch.stack(gate_up), torch.stack(down), hits


@pytest.mark.parametrize("model_type", ["gpt_oss", "llama4_text"])
@pytest.mark.parametrize("all_experts", [False, True])
@torch.no_grad()
def test_attach_statistics_on_input_major_experts_matches_each_familys_own_loop(model_type: str, all_experts: bool):
    """The hooks on gpt-oss's and Llama 4's experts (input-major, called each their own way) against the loop
    above; the weight groups are the [E, 2I, H] / [E, H, I] view, gate rows then up rows."""
    model = tiny_model(model_type, num_hidden_layers=2)
    family = get_adapter(model.config)
    layer = model.model.layers[1]  # Llama 4's first MoE layer
    moe = layer.get_submodule(family.layout.mlp)
    if model_type == "gpt_oss":  # biases the tiny model initialises to zero
        moe.experts.gate_up_proj_bias.normal_(0, 0.5, generator=generator(1))
    groups = layer_groups(layer, family, ["routed_experts"])
    experts = moe.experts.gate_up_proj.shape[0]
    view = groups[0].get(layer)
    intermediate = view.shape[1] // 2
    stored = moe.experts.gate_up_proj
    gate_cols = slice(0, None, 2) if family.layout.gate_up_interleaved else slice(0, intermediate)
    torch.testing.assert_close(view[:, :intermediate], stored[..., gate_cols].transpose(1, 2), rtol=0, atol=0)
    assert groups[1].get(layer).shape == (experts, model.config.hidden_size, intermediate)
    assert [g.in_features(layer) for g in groups] == [g.get(layer).shape[-1] for g in groups]
    hidden = torch.randn(3, 16, model.config.hidden_size, generator=generator(3))

    stats, handles = attach_statistics(layer, groups, all_experts, torch.device("cpu"))
    moe(hidden)
    for handle in handles:
        handle.remove()

    gate_up, down, hits = input_major_reference(model_type, moe, hidden.reshape(-1, hidden.shape[-1]), all_experts)
    assert min(hits) > 0 and len(set(hits)) > 1  # routing is neither empty nor uniform: the check means something
    assert stats.routed_tokens.tolist() == hits
    got_gate_up, got_down = stats.by_group[groups[0].name], stats.by_group[groups[1].name]
    torch.testing.assert_close(got_gate_up.sums.expand(experts, -1, -1), gate_up, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_down.sums, down, rtol=1e-5, atol=1e-5)
    assert got_down.counts.tolist() == ([48] * experts if all_experts else hits)


# ---------------------------------------------------------------------------------------------- quantization


@pytest.mark.parametrize(("bits", "group_size"), [(4, 32), (4, None), (8, 32)])
def test_rtn_equals_per_matrix_observer_and_fake_quantize(bits: int, group_size: int | None) -> None:
    """rtn.slim against llm-compressor's memoryless_minmax observer + compressed-tensors fake_quantize per matrix."""
    weight = random_weight()
    result = rtn.slim(RTNConfig(bits=bits, group_size=group_size), weight, None, group_size, F32)

    args = int_args(bits, group_size)
    assert result.args == args
    for b in range(B):
        scale, zero_point = observed(weight[b], args)
        assert torch.equal(result.scale[b], scale)
        assert torch.equal(result.weight[b], fake_quantize(weight[b], scale, zero_point, args))
    assert not torch.equal(result.weight, weight)


def test_fp8_equals_per_matrix_observer_and_fake_quantize_and_round_trips_through_its_format() -> None:
    """FP8 (e4m3, one scale per output channel): the fp8 stage's kernel against llm-compressor's observer and
    compressed-tensors' fake_quantize per matrix; its float-quantized tensors decompress to the same weights."""
    weight = random_weight()
    result = FP8Config().slimmer()(FP8Config(), weight, None, None, F32)
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel")
    assert result.args == args and result.scale.shape == (B, OUT, 1)
    for b in range(B):
        scale, zero_point = observed(weight[b], args)
        assert torch.equal(result.scale[b], scale)
        assert torch.equal(result.weight[b], fake_quantize(weight[b], scale, zero_point, args))
        stored = qparams.pack(result.weight[b], result.scale[b], result.args)
        assert stored.keys() == {"weight", "weight_scale"} and stored["weight"].dtype == torch.float8_e4m3fn
        base = {"num_bits": 8, "type": "float", "symmetric": True}
        torch.testing.assert_close(dequant.dequantize(stored, base), result.weight[b])
    assert not torch.equal(result.weight, weight)


def test_packed_rtn_weights_unpack_to_the_rounded_integers() -> None:
    """qparams.pack of rtn.slim's output against compressed-tensors' unpack_from_int32: the ints are Q / s."""
    weight = random_weight()
    result = rtn.slim(RTNConfig(group_size=32), weight, None, 32, F32)
    for b in range(B):
        packed = qparams.pack(result.weight[b], result.scale[b], result.args)
        assert packed["weight_shape"].tolist() == [OUT, IN]
        assert torch.equal(packed["weight_scale"], result.scale[b])
        ints = unpack_from_int32(packed["weight_packed"], 4, torch.Size([OUT, IN]))
        expected = (result.weight[b] / result.scale[b].repeat_interleave(32, dim=-1)).round()
        assert torch.equal(ints.float(), expected)
        assert int(ints.min()) >= -8 and int(ints.max()) <= 7 and int(ints.abs().max()) > 0


def gptq_reference(weight: torch.Tensor, hessian: torch.Tensor, config: GPTQConfig, group_size: int | None):
    """llm-compressor's quantize_weight on one matrix (batch of 1) with its own observer scales."""
    args = int_args(config.bits, group_size, actorder="static")
    scale, zero_point = observed(weight, args)
    quantized, _, fallback = quantize_weight(
        weight[None].clone(),
        hessian[None].clone(),
        scale[None],
        zero_point[None],
        None,
        args,
        blocksize=config.block_size,
        percdamp=config.dampening_frac,
    )
    return quantized[0], scale, bool(fallback[0])


@pytest.mark.parametrize("group_size", [32, None])
def test_gptq_equals_quantize_weight_per_matrix(group_size: int | None) -> None:
    """gptq.slim against llm-compressor's quantize_weight called one matrix at a time (bitwise)."""
    config = GPTQConfig(group_size=group_size, block_size=32, dampening_frac=0.01)
    weight, inputs = random_weight(), correlated_inputs()
    sums = inputs.transpose(1, 2) @ inputs
    stats = InputStats(sums, torch.full((B,), TOKENS, dtype=torch.long))
    result = gptq.slim(config, weight.clone(), stats, group_size, F32)  # clone: see the MISMATCH test

    assert result.fallbacks == []
    for b in range(B):
        quantized, scale, fallback = gptq_reference(weight[b], 2 * sums[b] / TOKENS, config, group_size)
        assert not fallback
        assert torch.equal(result.scale[b], scale)
        assert torch.equal(result.weight[b], quantized)


def test_gptq_entry_without_input_falls_back_to_round_to_nearest() -> None:
    """gptq.slim on an entry with zero count against rtn.slim of that entry (and the others still GPTQ)."""
    config = GPTQConfig(group_size=32, block_size=32)
    weight, inputs = random_weight(), correlated_inputs()
    stats = stats_of([inputs[0], inputs[1][:0], inputs[2], inputs[3]])
    result = gptq.slim(config, weight.clone(), stats, 32, F32)  # clone: see the MISMATCH test
    rounded = rtn.slim(config, weight, None, 32, F32).weight

    assert result.fallbacks == [1]
    assert torch.equal(result.weight[1], rounded[1])
    assert not torch.equal(result.weight[0], rounded[0])


def test_gptq_output_error_is_lower_than_round_to_nearest() -> None:
    """GPTQ's ||(W - Q) X^T|| against RTN's on correlated inputs (mean over entries)."""
    config = GPTQConfig(group_size=32, block_size=32)
    weight, inputs = random_weight(), correlated_inputs()
    stats = stats_of(list(inputs))
    gptq_error = output_error(weight, gptq.slim(config, weight.clone(), stats, 32, F32).weight, inputs)
    rtn_error = output_error(weight, rtn.slim(config, weight, None, 32, F32).weight, inputs)
    assert gptq_error < 0.8 * rtn_error, (gptq_error, rtn_error)


# ---------------------------------------------------------------------------------------------- pruning


def linear_of(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data.copy_(weight)
    return linear


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_equals_llmcompressor_sparsify_weight_per_matrix(pattern: str | None) -> None:
    """sparsegpt.slim against llm-compressor's sgpt sparsify_weight on an nn.Linear per entry."""
    config = SparseGPTConfig(pattern=pattern, block_size=32)
    n, m = config.n_m
    weight, inputs = random_weight(), correlated_inputs()
    result = sparsegpt.slim(config, weight, stats_of(list(inputs)), None, F32)

    assert result.fallbacks == []
    for b in range(B):
        linear = linear_of(weight[b])
        hessian, _ = sgpt_sparsify.accumulate_hessian(inputs[b][:, None, :], linear, torch.zeros(IN, IN), 0)
        hessians = {linear: hessian}  # sparsify_weight consumes its entry
        _, expected = sgpt_sparsify.sparsify_weight(
            linear, hessians, config.target_sparsity, n, m, config.block_size, config.dampening_frac, False
        )
        assert torch.equal(result.weight[b] == 0, expected == 0), f"entry {b}"
        torch.testing.assert_close(result.weight[b], expected, rtol=0, atol=1e-5)
    assert float((result.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_sparsegpt_output_error_is_lower_than_magnitude() -> None:
    """SparseGPT's ||(W - W') X^T|| against magnitude pruning's at 50% on correlated inputs (mean over entries)."""
    weight, inputs = random_weight(), correlated_inputs()
    stats = stats_of(list(inputs))
    pruned = sparsegpt.slim(SparseGPTConfig(sparsity=0.5, block_size=32), weight, stats, None, F32).weight
    by_magnitude = magnitude.slim(MagnitudeConfig(sparsity=0.5), weight, None, None, F32).weight
    assert float((pruned == 0).float().mean()) >= 0.5
    sparsegpt_error, magnitude_error = output_error(weight, pruned, inputs), output_error(weight, by_magnitude, inputs)
    assert sparsegpt_error < 0.8 * magnitude_error, (sparsegpt_error, magnitude_error)


def wanda_reference(weight: torch.Tensor, row_scalars: torch.Tensor, config: WandaConfig) -> torch.Tensor:
    """llm-compressor's wanda sparsify_weight on one nn.Linear."""
    linear = linear_of(weight)
    n, m = config.n_m
    return wanda_sparsify.sparsify_weight(linear, {linear: row_scalars}, config.target_sparsity, n, m)


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_wanda_equals_llmcompressor_sparsify_weight_per_matrix(pattern: str | None) -> None:
    """wanda.slim against llm-compressor's wanda sparsify_weight per entry (row scalars from accumulate_row_scalars)."""
    config = WandaConfig(pattern=pattern)
    weight, inputs = random_weight(), correlated_inputs()
    result = wanda.slim(config, weight, stats_of(list(inputs)), None, F32)

    assert result.fallbacks == []
    for b in range(B):
        linear = linear_of(weight[b])
        # each token one sample: row scalars = ||X_j||^2 / n, a per-matrix scaling Wanda's ranking ignores
        row_scalars, _ = wanda_sparsify.accumulate_row_scalars(inputs[b][:, None, :], linear, torch.zeros(IN), 0)
        expected = wanda_reference(weight[b], row_scalars, config)
        assert torch.equal(result.weight[b] == 0, expected == 0), f"entry {b}"
        assert torch.equal(result.weight[b], expected)


def test_wanda_entry_without_input_falls_back_to_magnitude_per_row() -> None:
    """wanda.slim on an entry with zero count against llm-compressor's wanda with all row scalars 1 (|W| per row)."""
    config = WandaConfig(sparsity=0.5)
    weight, inputs = random_weight(), correlated_inputs()
    result = wanda.slim(config, weight, stats_of([inputs[0], inputs[1], inputs[2][:0], inputs[3]]), None, F32)

    assert result.fallbacks == [2]
    assert torch.equal(result.weight[2], wanda_reference(weight[2], torch.ones(IN), config))
    assert not torch.equal(result.weight[0], wanda_reference(weight[0], torch.ones(IN), config))


@pytest.mark.parametrize("pattern", [None, "4:8"])
def test_magnitude_equals_magnitude_mask_per_matrix(pattern: str | None) -> None:
    """magnitude.slim against moecomp.compression.methods.pruning.magnitude_mask per entry."""
    config = MagnitudeConfig(pattern=pattern)
    weight = random_weight()
    result = magnitude.slim(config, weight, None, None, F32)

    assert result.fallbacks == []
    for b in range(B):
        mask = magnitude_mask(weight[b], config.target_sparsity, *config.n_m)
        assert torch.equal(result.weight[b], weight[b].masked_fill(mask, 0))


# MISMATCH: gptq.slim overwrites its float32 input weight. ``weight[start:stop].float()`` is a view when the weight
# is already float32, and llm-compressor's quantize_weight uses its ``weights`` argument as the working buffer
# (activation-order permutation, dead-column zeroing, block-wise Q and error updates written back in place), so
# after the call the caller's tensor holds a permuted, partly quantized working copy (every entry changed, by up to
# ~6 on N(0, 1) weights at [4, 24, 128]). bf16 inputs are copied by .float() and not affected. The streamed pass
# passes the layer's own parameter and overwrites it with the result right after, so its output is unaffected
# today, but any caller that reads the weight after slim (an error metric, a comparison) sees garbage.
@pytest.mark.parametrize("method", ["rtn", "gptq", "magnitude", "wanda", "sparsegpt"])
def test_slim_leaves_its_input_weight_untouched(method: str) -> None:
    """Every stage's kernel (``slimmer()``) against a copy of its input taken before the call (a slim returns a new
    weight)."""
    configs = {
        "rtn": RTNConfig(group_size=32),
        "gptq": GPTQConfig(group_size=32, block_size=32),
        "magnitude": MagnitudeConfig(),
        "wanda": WandaConfig(),
        "sparsegpt": SparseGPTConfig(block_size=32),
    }
    weight, inputs = random_weight(), correlated_inputs()
    original = weight.clone()
    config = configs[method]
    result = config.slimmer()(config, weight, stats_of(list(inputs)), 32 if config.quantizes else None, F32)
    assert not torch.equal(result.weight, original)
    change = float((weight - original).abs().max())
    assert change == 0, f"{method}.slim changed its input weight (max |change| {change:.3g})"
