#!/usr/bin/env python3
"""Compare the logits of an exported model, run by PyTorch, with moda's own.

    parity.py --export OUT --logits DUMP.safetensors [--device cuda] [--tol 1e-4]

DUMP is written by `moda eval --checkpoint CK --dump-logits DUMP.safetensors` (tensors "tokens"
I32 [B, T] and "logits" F32 [B, T, V]). With transformers installed the export is loaded the way
users load it: AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True), which gives
Olmo2ForCausalLM for model_type "olmo2" and tools/hf/modeling_moda.py for "moda"; every weight
must be used and none missing. Without transformers (or with --plain-torch) modeling_moda.py is
imported directly and fed the safetensors file, OLMo2 exports included (moda=False, reordered).
Prints the relative error ||hf - moda|| / ||moda|| over all logits and exits 1 above --tol.
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "I32": torch.int32, "F16": torch.float16}


def read_safetensors(path):
    """A reader of the format itself, so that the check needs no safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = bytearray(data[base + begin : base + end])
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if buf else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out, header.get("__metadata__", {})


def load_plain(export_dir, device):
    sys.path.insert(0, export_dir if os.path.exists(os.path.join(export_dir, "modeling_moda.py")) else os.path.dirname(os.path.abspath(__file__)))
    import configuration_moda
    import modeling_moda

    with open(os.path.join(export_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg["model_type"] == "olmo2":
        cfg.update(norm_placement="reordered", moda=False, moda_ffn_kv=False, moda_attn_kv_proj=False)
    for key in ("architectures", "auto_map", "model_type"):
        cfg.pop(key, None)
    config = configuration_moda.ModaConfig(**cfg)
    model = modeling_moda.ModaForCausalLM(config)
    weights, _ = read_safetensors(os.path.join(export_dir, "model.safetensors"))
    dtype = next(iter(weights.values())).dtype
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=torch.float32 if dtype == torch.float32 else dtype), "ModaForCausalLM (plain torch)"


def load_transformers(export_dir, device):
    import transformers
    from transformers import AutoModelForCausalLM

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    with open(os.path.join(export_dir, "config.json")) as f:
        want = json.load(f).get("torch_dtype", "float32")
    dtype = torch.bfloat16 if want == "bfloat16" else torch.float32
    kwargs = {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
    model, info = AutoModelForCausalLM.from_pretrained(
        export_dir, trust_remote_code=True, output_loading_info=True, **kwargs
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SystemExit(f"loading {export_dir}: {bad}")
    return model.to(device), f"{type(model).__name__} (transformers {transformers.__version__})"


def check_tokenizer(export_dir):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return
    with open(os.path.join(export_dir, "tokenizer_config.json")) as f:
        name = json.load(f).get("moda_tokenizer")
    if not os.path.exists(os.path.join(export_dir, "tokenizer.json")):
        print(f"tokenizer: no tokenizer.json ({name})")
        return
    # The export's config names model_type "moda", which transformers only knows through the
    # export's own code: without trust_remote_code it stops to ask.
    tok = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
    text = "Hello, world! In the beginning God created the heaven and the earth.\n\n  x"
    ids = tok.encode(text)
    ok = tok.decode(ids) == text
    if name == "byte":
        ok = ok and ids == list(text.encode())
    print(f"tokenizer: {name}, {len(ids)} ids, round trip {'ok' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit("tokenizer check failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--plain-torch", action="store_true", help="do not use transformers")
    ap.add_argument("--expect", default="", help="class name the export must load as (transformers only)")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dump, meta = read_safetensors(args.logits)
    tokens = dump["tokens"].long().to(args.device)
    want = dump["logits"].double()

    use_hf = not args.plain_torch
    if use_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            use_hf = False
    model, how = (load_transformers if use_hf else load_plain)(args.export, args.device)
    if use_hf and args.expect and args.expect not in how:
        raise SystemExit(f"expected {args.expect}, loaded {how}")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=tokens)
    got = (out.logits if hasattr(out, "logits") else out).double().cpu()
    if got.shape != want.shape:
        raise SystemExit(f"logits shape {tuple(got.shape)}, moda's {tuple(want.shape)}")
    rel = ((got - want).norm() / want.norm()).item()
    max_abs = (got - want).abs().max().item()
    agree = (got.argmax(-1) == want.argmax(-1)).double().mean().item()
    ok = math.isfinite(rel) and rel <= args.tol
    print(
        f"{args.export}: {how} vs moda [{meta.get('backend', '?')}] logits {tuple(want.shape)}: "
        f"rel err {rel:.3e} (tol {args.tol:.0e}), max abs {max_abs:.3e}, argmax agree {agree:.4f} "
        f"-> {'PASS' if ok else 'FAIL'}"
    )
    if use_hf:
        check_tokenizer(args.export)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
