#!/usr/bin/env python3
"""Communication cost model of expert parallelism (issue 14, item 9), in the standard library only.

One MoE layer's training step (forward + backward) on P machines, each holding n tokens of the
global batch and E / P experts:
  compute  = 3 * 2 GEMMs * 2*H*F flops * n * k rows / (machine rate)
  exchange = 4 all-to-alls (dispatch and combine, forward and backward), each sending
             n * k * H * 4 bytes * (P - 1) / P per machine in P - 1 messages:
             (P - 1) * alpha + bytes / beta
  step     = compute + exchange (exchanges not overlapped, as built), efficiency = compute / step.
The alternative, data parallelism of the experts, all-reduces their gradients instead: about
2 * (expert parameters) * 4 bytes per machine and step (a ring), independent of the tokens.

Calibration: alpha and beta of the loopback come from `mpirun -np 2 sparsemoe bench comm --json`,
the per-core rate from `sparsemoe bench moe --threads 1` (both on the machine of the day); the
network's alpha is an assumption (TCP), its beta the link rate. Writes a table (markdown) to stdout
and the figure to the path given (SVG).
usage: project_scaling.py COMM_JSON CORE_GFLOPS MEASURED_P2_EFFICIENCIES SVG_OUT
  e.g. project_scaling.py comm_np2.json 85 0.84,0.93,0.86,0.97,0.96,0.69 docs/figures/x.svg
"""
import json
import sys

LAYERS = {
    # name: (H, F, E, k, tokens per machine)
    "Sparse Mixer Base MoE layer (H 512, F 2048, E 16, k 1)": (512, 2048, 16, 1, 16384),
    "DeepSeek-V3-sized MoE layer (H 7168, F 2048, E 256, k 8)": (7168, 2048, 256, 8, 16384),
}
CORES_PER_MACHINE = 32
NET_ALPHA_S = 10e-6  # per message over TCP (assumed; the namespace runs will calibrate it)
LINKS = {"25 Gb/s": 25e9 / 8, "100 Gb/s": 100e9 / 8, "400 Gb/s": 400e9 / 8}
MACHINES = [2, 4, 8, 16, 32, 64, 128, 256]


def step(layer, P, rate, alpha, beta):
    H, F, E, k, n = layer
    compute = 3 * 2 * 2 * H * F * n * k / rate
    per_exchange = n * k * H * 4 * (P - 1) / P
    exchange = 4 * ((P - 1) * alpha + per_exchange / beta)
    return compute, exchange


def main():
    comm_json, core_gflops, measured, svg_out = sys.argv[1:5]
    comm = json.load(open(comm_json))
    loop_alpha = comm["latency_us"] * 1e-6
    loop_beta = comm["bandwidth_gbps"] * 1e9
    core = float(core_gflops) * 1e9
    points = [float(x) for x in measured.split(",")]
    rate = core * CORES_PER_MACHINE
    print(f"Calibration: loopback alpha {loop_alpha * 1e6:.2f} us, beta {loop_beta / 1e9:.2f} GB/s "
          f"(bench comm); {core / 1e9:.0f} GFLOP/s per core (bench moe, 1 thread), "
          f"{CORES_PER_MACHINE} cores per machine; network alpha {NET_ALPHA_S * 1e6:.0f} us (assumed).\n")
    series = []
    for name, layer in LAYERS.items():
        H, F, E, k, n = layer
        expert_bytes = E * 2 * H * F * 4
        print(f"### {name}, {n} tokens per machine\n")
        print("| machines | " + " | ".join(f"{l}: step, efficiency" for l in LINKS) + " |")
        print("| ---: | " + " | ".join("---:" for _ in LINKS) + " |")
        for P in MACHINES:
            cells = []
            for link, beta in LINKS.items():
                c, x = step(layer, P, rate, NET_ALPHA_S, beta)
                cells.append(f"{(c + x) * 1e3:.0f} ms, {c / (c + x):.0%}")
            print(f"| {P} | " + " | ".join(cells) + " |")
        a2a = 4 * n * k * H * 4
        print(f"\nBytes per machine and step: expert parallelism {a2a / 1e9:.2f} GB (all-to-alls, at "
              f"most); data parallelism of the experts {2 * expert_bytes / 1e9:.2f} GB (gradient "
              f"all-reduce), and every machine would hold all {expert_bytes / 1e9:.2f} GB of "
              f"expert weights.\n")
        for link, beta in LINKS.items():
            series.append((f"{name.split(' (')[0]}, {link}",
                           [step(layer, P, rate, NET_ALPHA_S, beta) for P in MACHINES]))
    # The machine of the day: 2 processes on one host, 1 core each, the loopback's alpha and beta.
    smb = list(LAYERS.values())[0]
    loop = [step((smb[0], smb[1], smb[2], smb[3], 4096), 2, core, loop_alpha, loop_beta)]
    c, x = loop[0]
    print(f"Loopback model at the measured point (P = 2, 4096 tokens per rank, 1 core each): "
          f"compute {c * 1e3:.0f} ms, exchange {x * 1e3:.1f} ms, efficiency {c / (c + x):.1%}; "
          f"measured {min(points):.0%}-{max(points):.0%}.")
    write_svg(svg_out, series, c / (c + x), points)


def write_svg(path, series, loop_model, points):
    W, Hh, L, R, T, B = 760, 420, 60, 300, 20, 50
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
        out.append(f'<text x="{L + pw + 42}" y="{ly}">{label}</text>')
    x2 = xs[2]
    out.append(f'<circle cx="{x2}" cy="{y(loop_model):.1f}" r="5" fill="none" stroke="black"/>')
    for e in points:
        out.append(f'<circle cx="{x2}" cy="{y(e):.1f}" r="3" fill="black"/>')
    ly = T + 14 + 16 * len(series) + 8
    out.append(f'<circle cx="{L + pw + 24}" cy="{ly - 4}" r="3" fill="black"/>')
    out.append(f'<text x="{L + pw + 42}" y="{ly}">measured, 2 processes on one host</text>')
    out.append(f'<circle cx="{L + pw + 24}" cy="{ly + 12}" r="5" fill="none" stroke="black"/>')
    out.append(f'<text x="{L + pw + 42}" y="{ly + 16}">model, loopback (same point)</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
