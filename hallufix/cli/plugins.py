"""``hallufix plugins`` (installed methods) and ``hallufix hooks --model M`` (resolved hook points)."""
from __future__ import annotations

import json

from hallufix.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("plugins", help="list installed methods (name, distribution, version, hook points)",
                       epilog="example: hallufix plugins --json")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--hooks", action="store_true",
                   help="also resolve each method's declared hook points on the built-in model (imports torch)")
    p.set_defaults(handler=_plugins)

    h = sub.add_parser("hooks", help="the resolved hook points of a model, with shapes",
                       epilog="example: hallufix hooks --model builtin 'attn_bias.*'")
    h.add_argument("--model", default=None, help="alias, hub id or folder (default: the built-in model)")
    h.add_argument("pattern", nargs="?", default="*", help="fnmatch selector over canonical names")
    h.add_argument("--plugins", default=None, help="also show which of these methods declares each point")
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h.set_defaults(handler=_hooks)


def _plugins(args) -> int:
    from hallufix.hookspecs import __name__ as _  # noqa: F401  (hookspecs import no torch)
    from hallufix.plugins import discover

    reg = discover()
    rows = []
    for name in reg.names():
        m = reg.methods[name]
        row = {"name": name, "dist": m.dist, "version": m.version, "target": str(m.target),
               "description": m.description}
        if args.hooks:
            row["hook_points"] = _declared_on_builtin(name)
        rows.append(row)
    analyses = [{"name": a.name, "kind": a.kind, "dist": a.dist, "description": a.description}
                for a in sorted(reg.analyses.values(), key=lambda a: a.name)]
    if args.json:
        print(json.dumps({"plugins": rows, "analyses": analyses, "errors": reg.errors}, indent=2))
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        print(f"{r['name']:<{width}}  {r['dist']} {r['version']}  {r['description']}")
        for hp in r.get("hook_points", []):
            print(f"{'':<{width}}    {hp}")
    for a in analyses:  # run by `hallufix inspect` (inspect) or `hallufix analyze NAME` (task)
        print(f"analysis {a['name']} ({a['kind']}, {a['dist']})  {a['description']}")
    for ep, err in sorted(reg.errors.items()):
        print(f"failed to load {ep}: {err}")
    if not rows:
        print("no methods installed")
    return 0


def _declared_on_builtin(name: str) -> list[str]:
    from hallufix.api import Session

    session = Session.load("builtin")
    return session.start([name]).declarations().get(name, [])


def _hooks(args) -> int:
    from hallufix import points
    from hallufix.api import Session
    from hallufix.models.loading import ModelNotAvailableError

    try:
        session = Session.load(args.model)
    except ModelNotAvailableError as exc:
        raise CliError(str(exc)) from None
    info = session.info
    owners: dict[str, list[str]] = {}
    if args.plugins:
        for method, names in session.start(args.plugins).declarations().items():
            for n in names:
                owners.setdefault(n, []).append(method)
    H, Hkv, D, d = info.num_heads, info.num_kv_heads, info.head_dim, info.hidden_size
    shapes = {"input_image": "PIL.Image per row", "layer_input": f"(B, q, {d})", "attn_kv": f"(B, {Hkv}, kv, {D})",
              "attn_bias": f"(B, 1|{H}, kv) per query row", "attn_probs": f"(B, {H}, R, kv)",
              "attn_heads": f"(B, q, {H}, {D})", "logits": "(B, V)",
              "qformer_bias": "(B, 1|H, 1|Q, K) over the image features",
              "mlp_in": f"(B, q, {d})", "mlp_out": f"(B, q, {d})", "logit_lens": "(B, V) last row",
              "attn_transform": f"(B, {H}, R, kv) float32 scores"}
    rows = []
    for name in points.select(args.pattern, info.num_layers, info.qformer_layers):
        kind, layer = points.parse_name(name)
        rows.append({"name": name, "kind": kind, "layer": layer, "shape": shapes.get(kind, ""),
                     "declared_by": owners.get(name, [])})
    if args.json:
        print(json.dumps({"model": info.name, "family": info.family, "num_layers": info.num_layers,
                          "num_heads": H, "num_kv_heads": Hkv, "head_dim": D, "points": rows}, indent=2))
        return 0
    print(f"{info.name} ({info.family}): {info.num_layers} layers, {H} heads ({Hkv} KV), head dim {D}")
    for r in rows:
        by = f"  <- {', '.join(r['declared_by'])}" if r["declared_by"] else ""
        print(f"  {r['name']:<28} {r['shape']}{by}")
    return 0
