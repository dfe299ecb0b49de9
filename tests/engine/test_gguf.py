"""GGUF files: config, de-quantization, llama.cpp's rotary row order, parity with transformers,
the weight cache, and clear errors for broken files."""

from pathlib import Path

import numpy as np
import pytest
import torch

from infini_reader import engine
from infini_reader.engine import ModelLoadError
from infini_reader.app.core.builtin import MODEL_SHA256, model_path
from infini_reader.app.core.paths import cache_dir
from infini_reader.engine.gguf import bytes_to_unicode, cached_folder, open_gguf, read_metadata, read_tensors, read_tokenizer

from ..conftest import shut_memory
from infini_reader.app.core import models

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType

PROMPT = (
    "Persuasion is the last novel fully completed by Jane Austen. It was published at the end of 1817, "
    "six months after her death. The story concerns Anne Elliot, a young Englishwoman of 27 years, "
    "whose family moves to lower their expenses."
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private weight cache, so that tiny test models never land in the user's."""
    monkeypatch.setenv("INFINI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- writing GGUF files the way llama.cpp's converter does ----


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: half-split rotary rows → interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, *mid, kind = hf.split(".")
    return f"blk.{i}.{GGUF_LAYER['.'.join(mid)]}.{kind}"


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """A byte-level vocabulary: 256 bytes, two merges, three control tokens."""
    tokens = list(bytes_to_unicode().values()) + ["Ġt", "he", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * 258 + [3, 3, 3]
    return tokens, types, ["Ġ t", "h e"]


def write_gguf(path: Path, hf_cfg, state: dict[str, torch.Tensor], arch: str = "llama", qtypes=None) -> None:
    """Write a Hugging Face state dict as llama.cpp would: GGUF names, q/k rows permuted (Llama
    only), tensors quantized as `qtypes` says (f32 otherwise)."""
    qtypes = qtypes or {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_context_length(hf_cfg.max_position_embeddings)
    w.add_embedding_length(hf_cfg.hidden_size)
    w.add_block_count(hf_cfg.num_hidden_layers)
    w.add_feed_forward_length(hf_cfg.intermediate_size)
    w.add_head_count(hf_cfg.num_attention_heads)
    w.add_head_count_kv(hf_cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(hf_cfg.rms_norm_eps)
    w.add_rope_freq_base(hf_cfg.rope_parameters["rope_theta"])
    tokens, types, merges = tiny_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(259)
    w.add_eos_token_id(260)
    for name, t in state.items():
        a = t.detach().float().numpy()
        if arch == "llama" and ".q_proj." in name:
            a = llama_cpp_permute(a, hf_cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            a = llama_cpp_permute(a, hf_cfg.num_key_value_heads)
        qt = qtypes.get(name, Q.F32)
        data = a if qt == Q.F32 else gguf.quants.quantize(a, qt)
        w.add_tensor(gguf_name(name), data, raw_dtype=None if data.dtype != np.uint8 else qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_hf_model(arch: str, seed: int = 0):
    """A tiny random transformers model with weights large enough that every one shows in the logits."""
    kw = dict(vocab_size=261, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=5000.0, tie_word_embeddings=False,
              max_position_embeddings=128)
    name = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[arch]
    cfg = getattr(transformers, f"{name}Config")(**kw)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{name}ForCausalLM")(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return cfg, model


def round_trip(a: torch.Tensor, qt) -> torch.Tensor:
    """What a tensor becomes after quantizing to qt and back (Q8_0 blocks lie inside rows, so this
    commutes with llama.cpp's row permutation)."""
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a.float().numpy(), qt), qt).copy())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_matches_the_same_weights_from_a_folder(tmp_path, cache, arch):
    hf_cfg, ref = random_hf_model(arch)
    qtypes = {"model.embed_tokens.weight": Q.Q8_0, "model.layers.0.self_attn.q_proj.weight": Q.Q8_0,
              "model.layers.1.self_attn.k_proj.weight": Q.Q8_0, "model.layers.1.mlp.down_proj.weight": Q.Q8_0,
              "lm_head.weight": Q.F16}
    state = ref.state_dict()
    with torch.no_grad():  # the reference gets exactly the values the GGUF will hold
        for name, qt in qtypes.items():
            state[name].copy_(round_trip(state[name], qt))
    ref.save_pretrained(tmp_path / "hf")
    write_gguf(tmp_path / "tiny.gguf", hf_cfg, state, arch, qtypes)

    from_gguf = shut_memory(models.load_model(tmp_path / "tiny.gguf", device="cpu", dtype="float32", segment_length=64))
    from_hf = shut_memory(models.load_model(tmp_path / "hf", device="cpu", dtype="float32", segment_length=64))
    assert from_gguf.config.model_type == arch and not from_gguf.config.tie_word_embeddings
    ours, theirs = from_gguf.model.state_dict(), from_hf.model.state_dict()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    ids = torch.randint(0, 261, (50,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(from_gguf.logits(ids), from_hf.logits(ids))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    torch.testing.assert_close(from_gguf.logits(ids), expected, rtol=1e-4, atol=1e-4)
    # the tokenizer and special tokens came along
    tok = from_gguf.tokenizer
    assert tok.encode("the<|im_end|>").ids == [tok.token_to_id("t"), tok.token_to_id("he"), 260]
    assert from_gguf.chat.eos_token == "<|im_end|>" and from_gguf.chat.stop_token_ids == [260, 258]


QUANT_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q6_K]


def random_blocks(qt, rows: int, cols: int, rng) -> np.ndarray:
    """Raw blocks of a K-quant (gguf cannot quantize to those): random codes, sane f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qt == Q.Q4_K:  # d and dmin first
        raw[..., 0:2] = scale
        raw[..., 2:4] = scale
    else:  # Q6_K: d last
        raw[..., -2:] = scale
    return raw.reshape(rows, -1)


def test_every_supported_tensor_type_reads_with_the_right_shape(tmp_path):
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp_path / "types.gguf"), "llama")
    expected = {}
    for i, qt in enumerate(QUANT_TYPES):
        name = f"blk.{i}.ffn_up.weight"
        if qt in (Q.Q4_K, Q.Q6_K):
            data = random_blocks(qt, 3, 512, rng)
        else:
            a = rng.standard_normal((3, 512)).astype(np.float32)
            data = a if qt == Q.F32 else gguf.quants.quantize(a, qt)
        w.add_tensor(name, data, raw_dtype=None if data.dtype != np.uint8 else qt)
        expected[f"model.layers.{i}.mlp.up_proj.weight"] = gguf.quants.dequantize(data, qt).reshape(3, 512)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = read_tensors(open_gguf(tmp_path / "types.gguf"), engine.InfiniConfig())
    for name, a in expected.items():
        assert got[name].dtype == torch.float32 and got[name].shape == (3, 512), name
        assert np.isfinite(a).all() and torch.equal(got[name], torch.from_numpy(a)), name


# ---- tokenizers of other families, against transformers' reading of the same file ----


def write_tokenizer_gguf(path: Path, model: str, tokens, types, **extra) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types)
    for key, value in extra.items():
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    """Llama 2 / Mistral / TinyLlama files: scores instead of merges, <0xNN> byte tokens."""
    pieces = ["▁", "t", "h", "e", "a", "c", "s", "▁t", "he", "▁the", "at", "▁c", "▁cat", "▁a", "ca", "ts", "!",
              "l", "o", "ll", "▁he", "▁hell"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    write_tokenizer_gguf(tmp_path / "spm.gguf", "llama", tokens, types, token_scores=scores, bos_token_id=1,
                         eos_token_id=2, unk_token_id=0)
    ours = read_tokenizer(read_metadata(open_gguf(tmp_path / "spm.gguf")))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="spm.gguf")
    for text in ["the cat", " the  cats!", "héllo hell", "", "a</s>the", "\n\tthe"]:
        ids = ours.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode("héllo the cats").ids) == "héllo the cats"


@pytest.mark.parametrize("pre", ["default", "llama-bpe", "qwen2"])
def test_byte_level_split_rules_match_transformers(tmp_path, pre):
    tokens, types, merges = tiny_vocab()
    write_tokenizer_gguf(tmp_path / "bpe.gguf", "gpt2", tokens, types, token_merges=merges, tokenizer_pre=pre)
    ours = read_tokenizer(read_metadata(open_gguf(tmp_path / "bpe.gguf")))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="bpe.gguf").backend_tokenizer
    text = "It's 2024: we'll   see 12345 ok?\n\n  the END<|im_end|>x"
    assert ours.pre_tokenizer.pre_tokenize_str(text) == ref.pre_tokenizer.pre_tokenize_str(text)
    assert ours.encode(text).ids == ref.encode(text).ids


# ---- the built-in model against transformers ----


@pytest.fixture(scope="module")
def transformers_smollm():
    """transformers' own GGUF loading of the built-in file, float32.

    `from_pretrained(gguf_file=...)` insists on the `accelerate` package, which this project does
    not need; it calls `load_gguf_checkpoint` for the config and the de-quantized, un-permuted
    weights, and so do we here.
    """
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = str(model_path())
    meta = load_gguf_checkpoint(path)["config"]
    cfg = transformers.LlamaConfig(**{k: v for k, v in meta.items() if k != "model_type"})
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(cfg)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    model = transformers.LlamaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding
    model.tie_weights()
    return model


def test_builtin_config(builtin_engine_f32):
    c = builtin_engine_f32.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert (c.vocab_size, c.rope_theta, c.tie_word_embeddings, c.max_position_embeddings) == (49152, 100000.0, True, 8192)


def test_builtin_logits_match_transformers(builtin_engine_f32, transformers_smollm):
    ids = builtin_engine_f32.tokenizer.encode(PROMPT).ids
    assert 50 <= len(ids) <= 64
    with torch.no_grad():
        expected = transformers_smollm(torch.tensor([ids])).logits[0]
    got = builtin_engine_f32.logits(ids)
    # Both sides de-quantize with gguf's code and compute in float32; measured max |diff| = 0.0
    # (logits up to ~36). 1e-3 leaves room for a different BLAS or attention kernel, while a
    # wrong rotary row order or a misplaced weight moves logits by whole units.
    diff = (got - expected).abs().max().item()
    assert diff < 1e-3, diff
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_builtin_export_hf_loads_back_identically(builtin_engine_f32, tmp_path):
    builtin_engine_f32.export_hf(tmp_path)
    back = models.load_model(tmp_path, device="cpu", dtype="float32")
    ids = builtin_engine_f32.tokenizer.encode(PROMPT).ids
    assert back.config.segment_length == builtin_engine_f32.config.segment_length
    assert torch.equal(back.logits(ids), builtin_engine_f32.logits(ids))
    assert back.fingerprint == builtin_engine_f32.fingerprint
    assert back.tokenizer.encode(PROMPT).ids == ids
    assert back.chat.eos_token == "<|im_end|>" and back.chat.stop_token_ids == [2, 0]


def test_second_load_reads_the_cache(builtin_engine_f32, monkeypatch):
    folder = cached_folder(model_path(), cache_dir())
    assert (folder / "model.safetensors").is_file() and folder.name == MODEL_SHA256

    def no_conversion(*a):
        raise AssertionError("converted again")

    monkeypatch.setattr(engine.gguf, "convert", no_conversion)
    monkeypatch.setattr(engine.gguf.hashlib, "sha256", no_conversion)  # the hash memo spares a re-read
    assert cached_folder(model_path(), cache_dir()) == folder


# ---- folders written by transformers ----


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_tiny_folder_matches_transformers(tmp_path, arch):
    hf_cfg, ref = random_hf_model(arch, seed=3)
    # sharded, as large downloads are; a stray file of other weights must not be picked up
    ref.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    (tmp_path / "consolidated.safetensors").write_bytes(b"Mistral's own format, not read")
    e = shut_memory(models.load_model(tmp_path, device="cpu", dtype="float32", segment_length=64))
    assert e.config.model_type == arch and e.config.qkv_bias == (arch == "qwen2") and e.config.rope_theta == 5000.0
    ids = torch.randint(0, 261, (60,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ref(ids[None]).logits[0]
    torch.testing.assert_close(e.logits(ids), expected, rtol=1e-4, atol=1e-4)


# ---- broken inputs ----


def test_truncated_gguf_is_refused_clearly(tmp_path, cache):
    hf_cfg, ref = random_hf_model("llama")
    write_gguf(tmp_path / "whole.gguf", hf_cfg, ref.state_dict())
    data = (tmp_path / "whole.gguf").read_bytes()
    for cut in (len(data) * 2 // 3, 600, 10):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="truncated"):
            models.load_model(tmp_path / "cut.gguf", device="cpu")
    assert not list((cache / "weights").glob(".*.*/")), "a failed conversion left a temporary folder"


def test_not_a_gguf_file_is_refused_clearly(tmp_path, cache):
    (tmp_path / "model.gguf").write_text("<html>404 Not Found</html>")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        models.load_model(tmp_path / "model.gguf", device="cpu")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model"):
        models.load_model(tmp_path / "notes.txt", device="cpu")


def test_unsupported_architecture_is_named(tmp_path, cache):
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="'mamba' is not supported"):
        models.load_model(tmp_path / "mamba.gguf", device="cpu")


def test_folder_without_weights_is_refused_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        models.load_model(tmp_path, device="cpu")
    hf_cfg, _ = random_hf_model("llama")
    hf_cfg.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights"):
        models.load_model(tmp_path, device="cpu")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickles"):
        models.load_model(tmp_path, device="cpu")


# ---- prepared weights: a warm start memory-maps the loaded model and knows its fingerprint ----


def loaded_the_old_way(folder: Path, adapter, dtype) -> engine.InfiniTransformer:
    """The model as load_model built it before prepared weights: allocated, copied into, adapter merged
    in float32, then cast."""
    from infini_reader.engine.adapter import apply_adapter
    from infini_reader.engine.checkpoint import load_state_dict_into, read_hf_directory

    cfg, tensors = read_hf_directory(folder)
    model = engine.InfiniTransformer.for_loading(cfg)
    load_state_dict_into(model, tensors, str(folder))
    if adapter is not None:
        apply_adapter(model, adapter)
    return model.to(dtype=dtype)


def tiny_gguf_with_adapter(tmp_path: Path) -> tuple[Path, Path]:
    from infini_reader.engine.adapter import add_lora, add_memory_projection, save_adapter

    from types import SimpleNamespace

    # tied embeddings (no output.weight), like the built-in model; random weights of our own model
    kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=128)
    model = engine.build_model(engine.InfiniConfig(vocab_size=261, head_dim=16, rope_theta=5000.0, **kw), seed=0)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("memory_gate") and k != "lm_head.weight"}
    hf_cfg = SimpleNamespace(rope_parameters={"rope_theta": 5000.0}, **kw)
    write_gguf(tmp_path / "tiny.gguf", hf_cfg, state, "llama", {"model.embed_tokens.weight": Q.Q8_0})
    plain = engine.load_model(tmp_path / "tiny.gguf", device="cpu", dtype="float32", cache_dir=tmp_path / "c0")
    # gates, LoRA factors and memory projections, as the shipped adapter has; all nudged off their start
    add_lora(plain.model, 2, 4.0)
    add_memory_projection(plain.model, 2, 4.0)
    with torch.no_grad():
        for p in plain.model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    save_adapter(plain.model, tmp_path / "nudged.safetensors")
    return tmp_path / "tiny.gguf", tmp_path / "nudged.safetensors"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_warm_start_maps_the_prepared_weights_with_the_same_fingerprint(tmp_path, monkeypatch, dtype):
    from infini_reader.engine import checkpoint
    from infini_reader.engine import engine as engine_module

    path, adapter = tiny_gguf_with_adapter(tmp_path)
    cache = tmp_path / "cache"
    first = engine.load_model(path, device="cpu", dtype=dtype, adapter=adapter, cache_dir=cache)
    folder = cached_folder(path, cache)
    (prepared,) = (folder / "prepared").glob("*.safetensors")
    old = loaded_the_old_way(folder, adapter, dtype)
    expected = checkpoint.weights_fingerprint(old)

    def not_again(*a, **k):
        raise AssertionError("a warm start merged the adapter or hashed the weights again")

    monkeypatch.setattr(engine_module, "apply_adapter", not_again)
    monkeypatch.setattr(engine_module, "weights_fingerprint", not_again)
    monkeypatch.setattr(checkpoint, "weights_fingerprint", not_again)
    warm = engine.load_model(path, device="cpu", dtype=dtype, adapter=adapter, cache_dir=cache)
    assert first.fingerprint == warm.fingerprint == expected
    assert warm.dtype == dtype and warm.model.model.layers[0].self_attn.memory_proj is not None
    ours, theirs = warm.model.state_dict(), old.state_dict()
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    assert warm.model.lm_head.weight is warm.model.model.embed_tokens.weight or not warm.config.tie_word_embeddings
    ids = torch.randint(0, 261, (40,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(warm.logits(ids), first.logits(ids))
    # mapped from the files, 64-byte aligned as freshly allocated tensors are (all but the odd-sized gates)
    weights = [p for p in warm.model.parameters() if p.numel() * p.element_size() % 64 == 0]
    assert len(weights) > 10 and all(p.data_ptr() % 64 == 0 for p in weights)
    # float32: only what the adapter changed is stored again; the rest is mapped from the converted file
    if dtype == torch.float32:
        assert prepared.stat().st_size < (folder / "model.safetensors").stat().st_size / 2
    monkeypatch.undo()

    # weights changed in place after loading: the fingerprint is computed, not remembered
    changed = engine.load_model(path, device="cpu", dtype=dtype, adapter=adapter, cache_dir=cache)
    with torch.no_grad():
        changed.model.model.layers[1].mlp.up_proj.weight[0, 0] += 1
    assert changed.fingerprint == checkpoint.weights_fingerprint(changed.model) != expected


def test_prepared_weights_belong_to_their_sources(tmp_path, monkeypatch):
    """Another adapter, dtype or config is prepared apart; a converted file changed since is not trusted."""
    from infini_reader.engine import checkpoint

    path, adapter = tiny_gguf_with_adapter(tmp_path)
    cache = tmp_path / "cache"
    fps = {}
    for args in [(adapter, "float32", {}), (None, "float32", {}), (adapter, "bfloat16", {}),
                 (adapter, "float32", {"segment_length": 32})]:
        e = engine.load_model(path, device="cpu", dtype=args[1], adapter=args[0], cache_dir=cache, **args[2])
        fps[e.fingerprint] = checkpoint.weights_fingerprint(e.model)
    assert len(fps) == 4 and all(k == v for k, v in fps.items())
    folder = cached_folder(path, cache)
    assert len(list((folder / "prepared").glob("*.safetensors"))) == checkpoint.PREPARED_KEEP

    # the converted weights are edited by hand: the prepared file no longer vouches for them
    weights = folder / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    e = engine.load_model(path, device="cpu", dtype="float32", adapter=adapter, cache_dir=cache)
    assert e.fingerprint == checkpoint.weights_fingerprint(e.model) not in fps
    assert torch.equal(e.model.model.norm.weight, tensors["model.norm.weight"])


def test_builtin_fingerprint_is_the_one_computed_the_old_way():
    """The application's built-in model (shipped adapter, the machine's dtype), loaded warm from its
    prepared weights, has exactly the fingerprint of the weights loaded as before: memories read
    before this change stay valid, memories of other weights are still refused."""
    from infini_reader.engine.checkpoint import weights_fingerprint

    models.load_model("builtin", device="cpu")  # prepares, if no start did yet
    e = models.load_model("builtin", device="cpu")
    adapter = models.builtin_adapter()
    old = loaded_the_old_way(cached_folder(model_path(), cache_dir()), adapter, e.dtype)
    assert e.fingerprint == weights_fingerprint(old)
    assert e.fingerprint == weights_fingerprint(e.model)
