// Masked-einsum MoE reference (see moe_reference.h). Loops are written in einsum order with
// double accumulators; speed is not a goal.
#include "sparsemoe/moe/moe_reference.h"

#include <vector>

#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

void moe_reference_forward(const FfnParams& p, const RoutingPlan& plan, const float* x, float* y,
                           const FfnDropout& drop, MoeReferenceState& s) {
  const int64_t G = plan.G, T = plan.T, E = plan.E, C = plan.C, H = p.H, F = p.F, F1 = p.width1();
  s.dispatch.resize({G, T, E, C});
  s.combine.resize({G, T, E, C});
  plan.to_dense(s.dispatch.data(), s.combine.data());
  s.expert_in.resize({G, E, C, H});
  s.h.resize({G, E, C, F1});
  s.a.resize({G, E, C, F});
  s.expert_out.resize({G, E, C, H});
  const float* D = s.dispatch.data();
  const float* W = s.combine.data();
  // expert_in[g,e,c,h] = sum_t dispatch[g,t,e,c] * x[g,t,h]
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h) {
          double acc = 0;
          for (int64_t t = 0; t < T; ++t)
            acc += D[((g * T + t) * E + e) * C + c] * x[(g * T + t) * H + h];
          s.expert_in[((g * E + e) * C + c) * H + h] = static_cast<float>(acc);
        }
  const bool drop_in = drop.enabled && p.inner_dropout > 0;
  const bool drop_out = drop.enabled && p.output_dropout > 0;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c) {
        const uint64_t id = static_cast<uint64_t>((g * E + e) * C + c);
        const float* in = s.expert_in.data() + id * H;
        for (int64_t j = 0; j < F1; ++j) {  // h = in . W1 + b1, both GLU halves
          double acc = p.b1 ? p.b1[e * F1 + j] : 0.0;
          for (int64_t h = 0; h < H; ++h) acc += in[h] * p.w1[(e * H + h) * F1 + j];
          s.h[id * F1 + j] = static_cast<float>(acc);
        }
        for (int64_t f = 0; f < F; ++f) {
          float a = activate(p.activation, s.h[id * F1 + f]);
          if (p.glu) a *= s.h[id * F1 + F + f];
          if (drop_in)
            a = dropout_keep(drop.inner_key, id * F + f, p.inner_dropout)
                    ? a * dropout_scale(p.inner_dropout)
                    : 0.f;
          s.a[id * F + f] = a;
        }
        for (int64_t h = 0; h < H; ++h) {
          double acc = p.b2 ? p.b2[e * H + h] : 0.0;
          for (int64_t f = 0; f < F; ++f) acc += s.a[id * F + f] * p.w2[(e * F + f) * H + h];
          float o = static_cast<float>(acc);
          if (drop_out)
            o = dropout_keep(drop.output_key, id * H + h, p.output_dropout)
                    ? o * dropout_scale(p.output_dropout)
                    : 0.f;
          s.expert_out[id * H + h] = o;
        }
      }
  // y[g,t,h] = sum_{e,c} combine[g,t,e,c] * expert_out[g,e,c,h]
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double acc = 0;
        for (int64_t e = 0; e < E; ++e)
          for (int64_t c = 0; c < C; ++c)
            acc += W[((g * T + t) * E + e) * C + c] * s.expert_out[((g * E + e) * C + c) * H + h];
        y[(g * T + t) * H + h] = static_cast<float>(acc);
      }
}

void moe_reference_backward(const FfnParams& p, const RoutingPlan& plan, const float* dy, float* dx,
                            float* dprobs, const FfnDropout& drop, MoeReferenceState& s,
                            const FfnGrads& grads) {
  const int64_t G = plan.G, T = plan.T, E = plan.E, C = plan.C, H = p.H, F = p.F, F1 = p.width1();
  const float* D = s.dispatch.data();
  const float* W = s.combine.data();
  const bool drop_in = drop.enabled && p.inner_dropout > 0;
  const bool drop_out = drop.enabled && p.output_dropout > 0;
  std::vector<double> d_out(G * E * C * H, 0.0), d_in(G * E * C * H, 0.0);
  // d expert_out[g,e,c,h] = sum_t combine[g,t,e,c] dy[g,t,h]
  // d combine[g,t,e,c] = sum_h dy[g,t,h] expert_out[g,e,c,h]; combine = p * dispatch
  for (int64_t i = 0; i < G * T * E; ++i) dprobs[i] = 0.f;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t m = ((g * T + t) * E + e) * C + c;
          const float* out = s.expert_out.data() + ((g * E + e) * C + c) * H;
          double dc = 0;
          for (int64_t h = 0; h < H; ++h) {
            d_out[((g * E + e) * C + c) * H + h] += W[m] * dy[(g * T + t) * H + h];
            dc += static_cast<double>(dy[(g * T + t) * H + h]) * out[h];
          }
          dprobs[(g * T + t) * E + e] += static_cast<float>(dc * D[m]);
        }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c) {
        const uint64_t id = static_cast<uint64_t>((g * E + e) * C + c);
        std::vector<double> g2(H), dh(F1);
        for (int64_t h = 0; h < H; ++h) {
          double v = d_out[id * H + h];
          if (drop_out)
            v = dropout_keep(drop.output_key, id * H + h, p.output_dropout)
                    ? v * dropout_scale(p.output_dropout)
                    : 0.0;
          g2[h] = v;
          if (grads.b2) grads.b2[e * H + h] += static_cast<float>(v);
        }
        for (int64_t f = 0; f < F; ++f) {
          double da = 0;
          for (int64_t h = 0; h < H; ++h) {
            da += g2[h] * p.w2[(e * F + f) * H + h];
            if (grads.w2)
              grads.w2[(e * F + f) * H + h] += static_cast<float>(s.a[id * F + f] * g2[h]);
          }
          if (drop_in)
            da = dropout_keep(drop.inner_key, id * F + f, p.inner_dropout)
                     ? da * dropout_scale(p.inner_dropout)
                     : 0.0;
          const float ha = s.h[id * F1 + f];
          if (p.glu) {  // a = act(h_act) * h_lin
            const double hl = s.h[id * F1 + F + f];
            dh[F + f] = da * activate(p.activation, ha);
            da *= hl;
          }
          dh[f] = da * activate_grad(p.activation, ha);
        }
        for (int64_t j = 0; grads.b1 && j < F1; ++j)
          grads.b1[e * F1 + j] += static_cast<float>(dh[j]);
        for (int64_t h = 0; h < H; ++h) {
          double acc = 0;
          for (int64_t j = 0; j < F1; ++j) {
            acc += dh[j] * p.w1[(e * H + h) * F1 + j];
            if (grads.w1)
              grads.w1[(e * H + h) * F1 + j] += static_cast<float>(s.expert_in[id * H + h] * dh[j]);
          }
          d_in[id * H + h] = acc;
        }
      }
  // dx[g,t,h] = sum_{e,c} dispatch[g,t,e,c] d_in[g,e,c,h]
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double acc = 0;
        for (int64_t e = 0; e < E; ++e)
          for (int64_t c = 0; c < C; ++c)
            acc += D[((g * T + t) * E + e) * C + c] * d_in[((g * E + e) * C + c) * H + h];
        dx[(g * T + t) * H + h] = static_cast<float>(acc);
      }
}

}  // namespace sparsemoe
