#!/usr/bin/env python3
"""Communication cost model of expert parallelism (issue 14, item 9), in the standard library only.

One MoE layer's training step (forward + backward) on P machines, each holding n tokens of the
global batch and E / P experts:
  compute  = 3 * 2 GEMMs * 2*H*F flops * n * k rows / (machine rate); a third of it forward
  exchange = 4 all-to-alls (dispatch and combine, forward and backward), each sending
             x = n * k * H * 4 bytes * (P - 1) / P per machine in P - 1 messages:
             t = (P - 1) * alpha + x / beta
  overlap (as built, the default): the two inbound all-to-alls (rows out, output gradients out)
             run while the machine computes its own rows, 1/P of that pass's compute, so each
             shows only max(0, t - own compute); the two return all-to-alls go in K chunks
             (--chunks, 4 as built), each chunk's transfer t_K = (P - 1) * alpha + x / K / beta
             hidden behind the next chunk's compute (C_K = the received rows' compute of that
             pass / K), a pipeline that shows max(t_K, K * t_K - (K - 1) * C_K).
  step     = compute + exposed exchange, efficiency = compute / step.
The alternative, data parallelism of the experts, all-reduces their gradients instead: about
2 * (expert parameters) * 4 bytes per machine and step (a ring), independent of the tokens.

Calibration, all from the machine of the day:
  --core-gflops  the per-core rate of the layer (`sparsemoe bench moe --threads 1`);
  --net-comm     `bench comm --json` between two hosts (network namespaces over TCP,
                 `scripts/netns_hosts.sh 1 -- build/sparsemoe bench comm --json`): its alpha is the
                 per-message latency used for the projected networks, whose beta is the link rate;
  --point LABEL=COMM_JSON=BENCH_MOE_LOG[=CHUNKS] (repeatable): a measured configuration, the
                 link's alpha and beta from its `bench comm --json`, and the `bench moe` log run
                 over it under mpirun (2 processes) with CHUNKS return chunks (1 for logs from
                 before they were built, the default); the model's exchange time is printed
                 against the measured one, with and without overlap, and the points go on the
                 figure.
Writes markdown tables to stdout and the figure (SVG) to --svg.
"""
import argparse
import json
import re

LAYERS = {
    # name: (H, F, E, k, tokens per machine)
    "Sparse Mixer Base MoE layer (H 512, F 2048, E 16, k 1)": (512, 2048, 16, 1, 16384),
    "DeepSeek-V3-sized MoE layer (H 7168, F 2048, E 256, k 8)": (7168, 2048, 256, 8, 16384),
}
CORES_PER_MACHINE = 32
LINKS = {"25 Gb/s": 25e9 / 8, "100 Gb/s": 100e9 / 8, "400 Gb/s": 400e9 / 8}
MACHINES = [2, 4, 8, 16, 32, 64, 128, 256]


def exchange_time(bytes_per_exchange, P, alpha, beta):
    return (P - 1) * alpha + bytes_per_exchange / beta


def exposed(compute, x, P, alpha, beta, overlap, chunks=4):
    """Exposed time of the four all-to-alls of x bytes each per machine, given the step's compute."""
    t = exchange_time(x, P, alpha, beta)
    if not overlap:
        return 4 * t
    own_fwd, own_bwd = compute / 3 / P, compute * 2 / 3 / P
    inbound = max(0.0, t - own_fwd) + max(0.0, t - own_bwd)
    K = chunks
    t_k = exchange_time(x / K, P, alpha, beta)

    def ret(pass_compute):  # the return pipeline behind the received rows' compute
        c_k = pass_compute * (P - 1) / P / K
        return max(t_k, K * t_k - (K - 1) * c_k)

    return inbound + ret(compute / 3) + ret(compute * 2 / 3)


def step(layer, P, rate, alpha, beta, overlap=True, chunks=4):
    H, F, E, k, n = layer
    compute = 3 * 2 * 2 * H * F * n * k / rate
    x = n * k * H * 4 * (P - 1) / P
    return compute, exposed(compute, x, P, alpha, beta, overlap, chunks)


def read_comm(path):
    c = json.load(open(path))
    return c["latency_us"] * 1e-6, c["bandwidth_gbps"] * 1e9


def read_bench_moe(path):
    """Rows of a `bench moe` log under mpirun: router, tokens, bytes/token, times in seconds."""
    rows = []
    tokens = None
    for line in open(path):
        m = re.search(r"T=(\d+) batch=(\d+) per rank", line)
        if m:
            tokens = int(m.group(1)) * int(m.group(2))
        m = re.search(r"^(\S+)\s+k=(\d).*fwd\+bwd\s+([\d.]+) ms.*exchange\s+([\d.]+) ms.*"
                      r"expert compute\s+([\d.]+) ms,\s+(\d+) bytes sent per token.*alone\s+"
                      r"([\d.]+) ms.*without overlap: fwd\+bwd\s+([\d.]+) ms, exchange\s+([\d.]+)",
                      line)
        if m:
            rows.append(dict(router=f"{m.group(1)} k={m.group(2)}", tokens=tokens,
                             step=float(m.group(3)) / 1e3, exch=float(m.group(4)) / 1e3,
                             compute=float(m.group(5)) / 1e3, bytes_per_token=int(m.group(6)),
                             alone=float(m.group(7)) / 1e3, step_no=float(m.group(8)) / 1e3,
                             exch_no=float(m.group(9)) / 1e3))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--core-gflops", type=float, required=True)
    ap.add_argument("--net-comm", required=True)
    ap.add_argument("--point", action="append", default=[])
    ap.add_argument("--svg", required=True)
    ap.add_argument("--chunks", type=int, default=4, help="return chunks of the projections")
    a = ap.parse_args()
    core = a.core_gflops * 1e9
    net_alpha, net_beta = read_comm(a.net_comm)
    rate = core * CORES_PER_MACHINE
    print(f"Calibration: {core / 1e9:.0f} GFLOP/s per core (bench moe, 1 thread), "
          f"{CORES_PER_MACHINE} cores per machine; network alpha {net_alpha * 1e6:.1f} us per "
          f"message (bench comm between two namespaces over TCP).\n")

    # The measured points against the model at the same P, link and bytes.
    points = []
    print("| link (bench comm: alpha, beta) | router | model exchange, no overlap / overlap | "
          "measured exposed exchange, no overlap / overlap | measured step, no overlap / overlap "
          "| efficiency vs alone (overlap) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for spec in a.point:
        label, comm_path, log_path, *rest = spec.split("=", 3)
        chunks = int(rest[0]) if rest else 1
        alpha, beta = read_comm(comm_path)
        for r in read_bench_moe(log_path):
            x = r["bytes_per_token"] * r["tokens"] / 4
            m_no = exposed(r["compute"], x, 2, alpha, beta, False)
            m_ov = exposed(r["compute"], x, 2, alpha, beta, True, chunks)
            eff = r["alone"] / r["step"]
            points.append((label, m_no, m_ov, r["exch_no"], r["exch"], eff))
            print(f"| {label} ({alpha * 1e6:.1f} us, {beta / 1e9:.2f} GB/s) | {r['router']} | "
                  f"{m_no * 1e3:.0f} / {m_ov * 1e3:.0f} ms | {r['exch_no'] * 1e3:.0f} / "
                  f"{r['exch'] * 1e3:.0f} ms | {r['step_no'] * 1e3:.0f} / {r['step'] * 1e3:.0f} ms "
                  f"| {eff:.0%} |")
    print()

    series = []
    for name, layer in LAYERS.items():
        H, F, E, k, n = layer
        expert_bytes = E * 2 * H * F * 4
        print(f"### {name}, {n} tokens per machine (overlap as built; without overlap in brackets)\n")
        print("| machines | " + " | ".join(f"{l}: step, efficiency" for l in LINKS) + " |")
        print("| ---: | " + " | ".join("---:" for _ in LINKS) + " |")
        for P in MACHINES:
            cells = []
            for link, beta in LINKS.items():
                c, x = step(layer, P, rate, net_alpha, beta, chunks=a.chunks)
                _, x0 = step(layer, P, rate, net_alpha, beta, overlap=False)
                cells.append(f"{(c + x) * 1e3:.0f} ms, {c / (c + x):.0%} ({c / (c + x0):.0%})")
            print(f"| {P} | " + " | ".join(cells) + " |")
        a2a = 4 * n * k * H * 4
        print(f"\nBytes per machine and step: expert parallelism {a2a / 1e9:.2f} GB (all-to-alls, at "
              f"most); data parallelism of the experts {2 * expert_bytes / 1e9:.2f} GB (gradient "
              f"all-reduce), and every machine would hold all {expert_bytes / 1e9:.2f} GB of "
              f"expert weights.\n")
        for link, beta in LINKS.items():
            series.append((f"{name.split(' (')[0]}, {link}",
                           [step(layer, P, rate, net_alpha, beta, chunks=a.chunks)
                            for P in MACHINES]))
    write_svg(a.svg, series, points)


def write_svg(path, series, points):
    W, Hh, L, R, T, B = 980, 460, 60, 520, 20, 50
    pw, ph = W - L - R, Hh - T - B
    xs = {P: L + pw * i / (len(MACHINES) - 1) for i, P in enumerate(MACHINES)}
    y = lambda e: T + ph * (1 - e)
    colours = ["#1b9e77", "#d95f02", "#7570b3", "#1b9e77", "#d95f02", "#7570b3"]
    dashes = ["", "", "", "6,4", "6,4", "6,4"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{Hh}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{Hh}" fill="white"/>']
    for e in [0, 0.25, 0.5, 0.75, 1.0]:
        out.append(f'<line x1="{L}" y1="{y(e)}" x2="{L + pw}" y2="{y(e)}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{y(e) + 4}" text-anchor="end">{e:.0%}</text>')
    for P, xp in xs.items():
        out.append(f'<text x="{xp}" y="{T + ph + 16}" text-anchor="middle">{P}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{Hh - 12}" text-anchor="middle">machines (P)</text>')
    out.append(f'<text x="14" y="{T + ph / 2}" transform="rotate(-90 14 {T + ph / 2})" '
               f'text-anchor="middle">scaling efficiency (compute / step)</text>')
    for i, (label, steps) in enumerate(series):
        pts = " ".join(f"{xs[P]:.1f},{y(c / (c + x)):.1f}" for P, (c, x) in zip(MACHINES, steps))
        out.append(f'<polyline fill="none" stroke="{colours[i]}" stroke-width="2" '
                   f'stroke-dasharray="{dashes[i]}" points="{pts}"/>')
        ly = T + 14 + 16 * i
        out.append(f'<line x1="{L + pw + 12}" y1="{ly - 4}" x2="{L + pw + 36}" y2="{ly - 4}" '
                   f'stroke="{colours[i]}" stroke-width="2" stroke-dasharray="{dashes[i]}"/>')
        out.append(f'<text x="{L + pw + 42}" y="{ly}">model: {label}</text>')
    # Measured points at P = 2, one marker per link, offset sideways so that they stay readable.
    shapes = ["circle", "square", "triangle"]
    labels = []
    for label, *_ in points:
        if label not in labels:
            labels.append(label)
    for j, label in enumerate(labels):
        xp = xs[2] - 10 + 10 * j
        for lab, _, _, _, _, eff in points:
            if lab == label:
                out.append(marker(shapes[j % 3], xp, y(min(eff, 1.0))))
        ly = T + 14 + 16 * (len(series) + j) + 8
        out.append(marker(shapes[j % 3], L + pw + 24, ly - 4))
        out.append(f'<text x="{L + pw + 42}" y="{ly}">measured, 2 processes: {label} '
                   f'(vs alone)</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def marker(shape, x, y):
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="black"/>'
    if shape == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="none" stroke="black"/>'
    return (f'<polygon points="{x:.1f},{y - 4:.1f} {x - 4:.1f},{y + 3:.1f} {x + 4:.1f},{y + 3:.1f}" '
            f'fill="none" stroke="black"/>')


if __name__ == "__main__":
    main()
