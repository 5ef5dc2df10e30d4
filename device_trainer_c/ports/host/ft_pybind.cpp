// pybind11 bindings of the device trainer: this file only binds. Argument checking, shapes
// and exceptions live in fedtiny/trainer/*.py; functions here return ft_status codes.
// Arrays are taken as C-contiguous numpy arrays of the exact dtype (no implicit copies).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <cstring>
#include <tuple>
#include <vector>

extern "C" {
#include "fedtiny/ft_codec.h"
#include "fedtiny/ft_proto.h"
#include "fedtiny/ft_math.h"
#include "fedtiny/ft_model.h"
#include "fedtiny/ft_nn.h"
#include "fedtiny/ft_trainer.h"
#include "ft_layers_f32.h"
#include "../../src/nn/ft_nn_support.h"
}

namespace py = pybind11;
template <typename T>
using arr = py::array_t<T, py::array::c_style>;

struct ModelHandle {
    arr<uint8_t> bytes;  // keeps the model bytes alive: tensors are used in place
    ft_model model;
};

struct TrainerHandle {
    std::shared_ptr<ModelHandle> model;
    arr<uint8_t> arena;  // caller-owned arena
    ft_trainer tr;
};

// x: C-contiguous int8 samples, or float32 samples for trainers with start_layer > 0
static ft_dataset dataset(const py::array &x, const arr<uint8_t> &y, int sample_size) {
    const bool floats = x.dtype().is(py::dtype::of<float>());
    return ft_dataset{floats ? nullptr : static_cast<const int8_t *>(x.data()), y.data(),
                      static_cast<int32_t>(y.size()), sample_size,
                      floats ? static_cast<const float *>(x.data()) : nullptr};
}

static py::tuple stats(ft_status st, const ft_stats &s) {
    return py::make_tuple(static_cast<int>(st), s.loss, s.correct, s.count, s.steps);
}

// updates: empty (every tensor) or one (weights kind, bias, channels) tuple per trainable layer
static ft_train_config config(float lr, float momentum, float wd, int batch, int with_prefix, float prox_mu,
                              int start_layer, const std::vector<std::tuple<int, int, int>> &updates, int precision,
                              int rounding) {
    ft_train_config c{};
    c.precision = precision;
    c.rounding = rounding;
    c.lr = lr; c.momentum = momentum; c.weight_decay = wd; c.batch_size = batch; c.with_prefix = with_prefix;
    c.prox_mu = prox_mu;
    c.start_layer = start_layer;
    c.n_updates = static_cast<int32_t>(std::min<size_t>(updates.size(), FT_MAX_LAYERS));
    if (updates.size() > FT_MAX_LAYERS) c.n_updates = -1;  // rejected by the plan
    for (int32_t k = 0; k < c.n_updates; k++) {
        c.update[k] = ft_layer_update{static_cast<uint8_t>(std::get<0>(updates[k])),
                                      static_cast<uint8_t>(std::get<1>(updates[k])),
                                      static_cast<uint16_t>(std::get<2>(updates[k]))};
    }
    return c;
}

static py::dict plan_dict(const ft_plan &p) {
    py::dict d;
    d["arena_bytes"] = p.arena_bytes;
    d["params_bytes"] = p.params_bytes;
    d["qparams_bytes"] = p.qparams_bytes;
    d["qscale_bytes"] = p.qscale_bytes;
    d["momentum_bytes"] = p.momentum_bytes;
    d["grads_bytes"] = p.grads_bytes;
    d["anchor_bytes"] = p.anchor_bytes;
    d["index_bytes"] = p.index_bytes;
    d["update_count"] = p.update_count;
    d["first_backward"] = p.first_backward;
    d["prefix_bytes"] = p.prefix_bytes;
    d["scratch_bytes"] = p.scratch_bytes;
    d["acts_bytes"] = p.acts_bytes;
    d["grad_acts_bytes"] = p.grad_acts_bytes;
    d["param_count"] = p.param_count;
    d["sample_size"] = p.sample_size;
    d["feature_size"] = p.feature_size;
    return d;
}

static cmsis_nn_dims dims(py::sequence s) {
    return cmsis_nn_dims{s[0].cast<int32_t>(), s[1].cast<int32_t>(), s[2].cast<int32_t>(), s[3].cast<int32_t>()};
}

static cmsis_nn_context context(arr<uint8_t> &buf) {
    return cmsis_nn_context{buf.size() ? buf.mutable_data() : nullptr, static_cast<int32_t>(buf.size())};
}

static cmsis_nn_tile tile(py::sequence hw) { return cmsis_nn_tile{hw[1].cast<int32_t>(), hw[0].cast<int32_t>()}; }

PYBIND11_MODULE(_core, m) {
    m.doc() = "fedtiny device trainer (C) bindings; use fedtiny.trainer instead of this module.";
    m.attr("TRAINER_VERSION") = FT_TRAINER_VERSION;
    m.attr("MAX_LAYERS") = FT_MAX_LAYERS;
    m.attr("ARENA_ALIGN") = FT_ARENA_ALIGN;
    // the bounds every training configuration respects (a board refuses a TRAIN outside them)
    m.attr("MAX_EPOCHS") = FT_MAX_EPOCHS;
    m.attr("MAX_BATCH") = FT_MAX_BATCH;
    m.attr("MAX_LR") = FT_MAX_LR;
    m.attr("MAX_WEIGHT_DECAY") = FT_MAX_WEIGHT_DECAY;
    m.attr("MAX_PROX_MU") = FT_MAX_PROX_MU;
    m.attr("TRAINER_STRUCT_BYTES") = sizeof(ft_trainer);
    m.def("status_name", [](int s) { return std::string(ft_status_name(static_cast<ft_status>(s))); });
    m.def("crc32", [](const arr<uint8_t> &b) { return ft_crc32(b.data(), static_cast<uint32_t>(b.size())); });

    py::class_<ModelHandle, std::shared_ptr<ModelHandle>>(m, "ModelHandle")
        .def_property_readonly("num_layers", [](const ModelHandle &h) { return h.model.num_layers; })
        .def_property_readonly("first_trainable", [](const ModelHandle &h) { return h.model.first_trainable; })
        .def_property_readonly("num_classes", [](const ModelHandle &h) { return h.model.num_classes; })
        .def_property_readonly("input_shape", [](const ModelHandle &h) {
            return py::make_tuple(h.model.in_h, h.model.in_w, h.model.in_c);
        })
        .def_property_readonly("input_scale", [](const ModelHandle &h) { return h.model.input_scale; })
        .def_property_readonly("input_zero_point", [](const ModelHandle &h) { return h.model.input_zero_point; })
        .def("layer", [](const ModelHandle &h, int i) {
            const ft_layer &l = h.model.layers[i];
            py::dict d;
            d["type"] = l.type; d["act"] = l.act; d["trainable"] = l.trainable;
            d["in_shape"] = py::make_tuple(l.in_h, l.in_w, l.in_c);
            d["out_shape"] = py::make_tuple(l.out_h, l.out_w, l.out_c);
            d["kernel"] = py::make_tuple(l.k_h, l.k_w); d["stride"] = py::make_tuple(l.stride_h, l.stride_w);
            d["padding"] = py::make_tuple(l.pad_h, l.pad_w); d["dilation"] = py::make_tuple(l.dil_h, l.dil_w);
            d["ch_mult"] = l.ch_mult; d["input_offset"] = l.input_offset; d["output_offset"] = l.output_offset;
            d["act_min"] = l.act_min; d["act_max"] = l.act_max; d["out_scale"] = l.out_scale;
            d["weight_count"] = l.weight_count; d["bias_count"] = l.bias_count;
            d["scratch_bytes"] = ft_layer_scratch_bytes_s8(&l);
            return d;
        });

    m.def("model_load", [](arr<uint8_t> bytes) {
        auto h = std::make_shared<ModelHandle>();
        h->bytes = bytes;
        ft_status st = ft_model_load(&h->model, h->bytes.data(), static_cast<uint32_t>(h->bytes.size()));
        return py::make_tuple(static_cast<int>(st), st == FT_OK ? py::cast(h) : py::none());
    });
    m.def("layer_forward_s8", [](const ModelHandle &h, int i, const arr<int8_t> &in, arr<int8_t> out,
                                 arr<uint8_t> scratch) {
        return static_cast<int>(ft_layer_forward_s8(&h.model.layers[i], in.data(), out.mutable_data(),
                                                    scratch.size() ? scratch.mutable_data() : nullptr,
                                                    static_cast<int32_t>(scratch.size())));
    });
    m.def("layer_forward_f32", [](const ModelHandle &h, int i, const arr<float> &w, const arr<float> &b,
                                  const arr<float> &in, arr<float> out) {
        const ft_layer &l = h.model.layers[i];
        const ft_wview v{w.data(), nullptr, nullptr, nullptr, ft_layer_row_f32(&l)};
        ft_layer_forward_f32(&l, &v, b.data(), in.data(), out.mutable_data());
    });

    // ---- update codec (ft_codec.h) ----
    m.def("codec_blob_bytes", [](int bits, int per_channel, int channels, int channel_last, int n) {
        ft_codec_params p{bits, per_channel, channels, channel_last};
        return ft_codec_blob_bytes(&p, n);
    });
    m.def("codec_encode", [](int bits, int per_channel, int channels, int channel_last, int nearest,
                             const arr<float> &v, uint32_t key, arr<float> residual) {
        ft_codec_params p{bits, per_channel, channels, channel_last, nearest};
        const int32_t n = static_cast<int32_t>(v.size());
        const uint32_t need = ft_codec_blob_bytes(&p, n);
        arr<uint8_t> out(need);
        uint32_t written = 0;
        ft_status st = FT_ERR_BAD_CONFIG;
        if (need > 0 && (residual.size() == 0 || residual.size() == v.size())) {
            st = ft_codec_encode(&p, v.data(), n, key, residual.size() ? residual.mutable_data() : nullptr,
                                 out.mutable_data(), need, &written);
        }
        return py::make_tuple(static_cast<int>(st), out);
    });
    m.def("codec_decode", [](const arr<uint8_t> &blob, int max_n) {
        arr<float> out(std::max(max_n, 0));
        ft_codec_params p{};
        int32_t n = 0;
        ft_status st = ft_codec_decode(blob.data(), static_cast<uint32_t>(blob.size()), out.mutable_data(), max_n,
                                       &p, &n);
        return py::make_tuple(static_cast<int>(st), out, n, py::make_tuple(p.bits, p.per_channel, p.channels,
                                                                           p.channel_last));
    });
    // ---- serial protocol (ft_proto.h): the board's receiver run over a byte stream ----
    // idle: byte counts after which the line falls silent past the inter-byte timeout (the
    // board's main loop then calls ft_proto_expire until it returns 0)
    m.def("proto_parse", [](const py::bytes &data, const std::vector<size_t> &idle) {
        const std::string s = data;
        auto rx = std::make_unique<ft_proto_rx>();
        ft_proto_rx_init(rx.get());
        py::list frames;
        ft_frame f{};
        auto add = [&]() {
            frames.append(py::make_tuple(f.type, f.seq, py::bytes(reinterpret_cast<const char *>(f.payload), f.length)));
        };
        auto expire = [&]() {
            while (ft_proto_pending(rx.get()) != 0u && ft_proto_expire(rx.get(), &f)) {
                add();
            }
        };
        for (size_t i = 0; i < s.size(); i++) {
            if (ft_proto_feed(rx.get(), static_cast<uint8_t>(s[i]), &f)) {
                add();
            }
            if (std::find(idle.begin(), idle.end(), i + 1) != idle.end()) {
                expire();
            }
        }
        return py::make_tuple(frames, rx->dropped, rx->skipped);
    }, py::arg("data"), py::arg("idle") = std::vector<size_t>{});
    m.def("proto_write", [](int type, int seq, const py::bytes &payload) {
        const std::string p = payload;
        std::vector<uint8_t> out(FT_PROTO_MAX_FRAME);
        const uint32_t n = ft_proto_write(out.data(), static_cast<uint8_t>(type), static_cast<uint8_t>(seq),
                                          reinterpret_cast<const uint8_t *>(p.data()), static_cast<uint16_t>(
                                              std::min<size_t>(p.size(), 0xFFFF)));
        return py::bytes(reinterpret_cast<const char *>(out.data()), p.size() > 0xFFFF ? 0 : n);
    });
    m.def("uniform", [](uint32_t key, uint32_t ctr) { return ft_uniform(key, ctr); });
    m.def("gaussian", [](uint32_t key, uint32_t ctr) { return ft_gaussian(key, ctr); });
    m.def("sqrtf", [](float x) { return ft_sqrtf(x); });
    // tensors: (bits, per_channel, channels, channel_last, nearest, values, key) per tensor
    m.def("codec_encode_update", [](const std::vector<std::tuple<int, int, int, int, int, arr<float>, uint32_t>> &ts,
                                    float clip, float noise_std, uint32_t noise_key) {
        std::vector<ft_codec_tensor> t(ts.size());
        std::vector<arr<uint8_t>> outs;
        int32_t max_n = 1;
        for (size_t k = 0; k < ts.size(); k++) {
            const auto &[bits, pc, ch, last, nearest, v, key] = ts[k];
            ft_codec_params p{bits, pc, ch, last, nearest};
            const int32_t n = static_cast<int32_t>(v.size());
            outs.emplace_back(std::max<uint32_t>(ft_codec_blob_bytes(&p, n), 1u));
            t[k] = ft_codec_tensor{p, v.data(), n, key, outs.back().mutable_data(),
                                   static_cast<uint32_t>(outs.back().size()), 0};
            max_n = std::max(max_n, n);
        }
        std::vector<float> scratch(static_cast<size_t>(max_n));
        float before = 0.0f, sent = 0.0f;
        ft_status st = ft_codec_encode_update(t.data(), static_cast<int32_t>(t.size()), clip, noise_std, noise_key,
                                              scratch.data(), max_n, &before, &sent);
        py::list blobs;
        for (size_t k = 0; k < ts.size(); k++) {
            blobs.append(st == FT_OK ? py::object(outs[k][py::slice(0, t[k].written, 1)]) : py::none());
        }
        return py::make_tuple(static_cast<int>(st), blobs, before, sent);
    });

    m.def("plan", [](const ModelHandle &h, float lr, float mom, float wd, int batch, int with_prefix, float prox,
                     int start_layer, const std::vector<std::tuple<int, int, int>> &updates, int precision,
                     int rounding) {
        ft_train_config cfg = config(lr, mom, wd, batch, with_prefix, prox, start_layer, updates, precision, rounding);
        ft_plan p{};
        ft_status st = ft_trainer_plan(&h.model, &cfg, &p);
        return py::make_tuple(static_cast<int>(st), plan_dict(p));
    });

    py::class_<TrainerHandle, std::shared_ptr<TrainerHandle>>(m, "TrainerHandle")
        .def("hwm", [](const TrainerHandle &t) { return ft_trainer_arena_hwm(&t.tr); })
        .def("layer_params", [](const TrainerHandle &t, int k) -> py::tuple {  // copies of weights and bias
            const int n_train = t.model->model.num_layers - t.model->model.first_trainable;
            if (k < 0 || k >= n_train) return py::make_tuple(static_cast<int>(FT_ERR_BAD_CONFIG), py::none(), py::none());
            const ft_layer &l = t.model->model.layers[t.model->model.first_trainable + k];
            arr<float> wa(l.weight_count), ba(l.bias_count);
            ft_status st = ft_trainer_layer_params(&t.tr, k, wa.mutable_data(), ba.mutable_data());
            return py::make_tuple(static_cast<int>(st), wa, ba);
        })
        .def("set_layer_params", [](TrainerHandle &t, int k, const arr<float> &w, const arr<float> &b) {
            return static_cast<int>(ft_trainer_set_layer_params(&t.tr, k, w.size() ? w.data() : nullptr,
                                                                b.size() ? b.data() : nullptr));
        })
        .def("layer_grads", [](const TrainerHandle &t, int k, arr<float> gw, arr<float> gb) {
            return static_cast<int>(ft_trainer_layer_grads(&t.tr, k, gw.size() ? gw.mutable_data() : nullptr,
                                                           gb.size() ? gb.mutable_data() : nullptr));
        })
        .def("layer_update", [](const TrainerHandle &t, int k) {  // (weights kind, bias, updated channels)
            const ft_layer_state &s = t.tr.ls[k];
            const ft_layer &l = t.model->model.layers[t.model->model.first_trainable + k];
            std::vector<int> channels;
            for (int oc = 0; s.w_kind != FT_UPDATE_NONE && oc < l.out_c; oc++) {
                if (s.slot == nullptr || s.slot[oc] >= 0) channels.push_back(oc);
            }
            return py::make_tuple(s.w_kind, s.b_on, channels);
        })
        .def("train_epochs", [](TrainerHandle &t, const py::array &x, const arr<uint8_t> &y, int epochs,
                                uint32_t seed) {
            ft_dataset d = dataset(x, y, t.tr.plan.sample_size);
            ft_stats s{};
            ft_status st;
            {
                py::gil_scoped_release release;
                st = ft_trainer_train_epochs(&t.tr, &d, epochs, seed, &s);
            }
            return stats(st, s);
        })
        .def("accumulate", [](TrainerHandle &t, const py::array &x, const arr<uint8_t> &y) {
            ft_dataset d = dataset(x, y, t.tr.plan.sample_size);
            ft_stats s{};
            ft_status st;
            {
                py::gil_scoped_release release;
                st = ft_trainer_accumulate(&t.tr, &d, nullptr, d.count, &s);
            }
            return stats(st, s);
        })
        .def("set_anchor", [](TrainerHandle &t) { return static_cast<int>(ft_trainer_set_anchor(&t.tr)); })
        .def("apply", [](TrainerHandle &t, int n) { return static_cast<int>(ft_trainer_apply(&t.tr, n)); })
        .def("step", [](TrainerHandle &t, const py::array &x, const arr<uint8_t> &y) {
            ft_dataset d = dataset(x, y, t.tr.plan.sample_size);
            ft_stats s{};
            ft_status st = ft_trainer_step(&t.tr, &d, nullptr, d.count, &s);
            return stats(st, s);
        })
        .def("evaluate", [](TrainerHandle &t, const py::array &x, const arr<uint8_t> &y, arr<float> logits) {
            ft_dataset d = dataset(x, y, t.tr.plan.sample_size);
            ft_stats s{};
            ft_status st;
            {
                py::gil_scoped_release release;
                st = ft_trainer_evaluate(&t.tr, &d, logits.size() ? logits.mutable_data() : nullptr, &s);
            }
            return stats(st, s);
        });

    m.def("trainer_init", [](std::shared_ptr<ModelHandle> h, float lr, float mom, float wd, int batch,
                             int with_prefix, float prox, int start_layer,
                             const std::vector<std::tuple<int, int, int>> &updates, int precision, int rounding,
                             arr<uint8_t> arena) {
        auto t = std::make_shared<TrainerHandle>();
        t->model = h;
        t->arena = arena;
        ft_train_config cfg = config(lr, mom, wd, batch, with_prefix, prox, start_layer, updates, precision,
                                     rounding);
        ft_status st = ft_trainer_init(&t->tr, &h->model, &cfg, t->arena.mutable_data(),
                                       static_cast<uint32_t>(t->arena.size()));
        return py::make_tuple(static_cast<int>(st), st == FT_OK ? py::cast(t) : py::none());
    });

    // ---- CMSIS-NN-named int8 kernels (one sample batch per call; dims are [N, H, W, C]) ----
    m.def("arm_convolve_s8", [](const arr<int8_t> &in, py::sequence in_dims, const arr<int8_t> &w,
                                py::sequence w_dims, const arr<int32_t> &bias, arr<int32_t> mult, arr<int32_t> shift,
                                int in_off, int out_off, py::sequence stride, py::sequence pad, py::sequence dil,
                                int act_min, int act_max, py::sequence out_dims, arr<int8_t> out, arr<uint8_t> ctx_buf) {
        cmsis_nn_conv_params p{in_off, out_off, tile(stride), tile(pad), tile(dil), {act_min, act_max}};
        cmsis_nn_per_channel_quant_params q{mult.mutable_data(), shift.mutable_data()};
        cmsis_nn_dims id = dims(in_dims), fd = dims(w_dims), od = dims(out_dims), bd{1, 1, 1, od.c}, up{1, 1, 1, 1};
        cmsis_nn_context ctx = context(ctx_buf);
        return static_cast<int>(arm_convolve_s8(&ctx, &p, &q, &id, in.data(), &fd, w.data(), &bd,
                                                bias.size() ? bias.data() : nullptr, &up, &od, out.mutable_data()));
    });
    m.def("arm_depthwise_conv_s8", [](const arr<int8_t> &in, py::sequence in_dims, const arr<int8_t> &w,
                                      py::sequence w_dims, const arr<int32_t> &bias, arr<int32_t> mult,
                                      arr<int32_t> shift, int ch_mult, int in_off, int out_off, py::sequence stride,
                                      py::sequence pad, py::sequence dil, int act_min, int act_max,
                                      py::sequence out_dims, arr<int8_t> out, arr<uint8_t> ctx_buf) {
        cmsis_nn_dw_conv_params p{in_off, out_off, ch_mult, tile(stride), tile(pad), tile(dil), {act_min, act_max}};
        cmsis_nn_per_channel_quant_params q{mult.mutable_data(), shift.mutable_data()};
        cmsis_nn_dims id = dims(in_dims), fd = dims(w_dims), od = dims(out_dims), bd{1, 1, 1, od.c};
        cmsis_nn_context ctx = context(ctx_buf);
        return static_cast<int>(arm_depthwise_conv_s8(&ctx, &p, &q, &id, in.data(), &fd, w.data(), &bd,
                                                      bias.size() ? bias.data() : nullptr, &od, out.mutable_data()));
    });
    m.def("arm_fully_connected_s8", [](const arr<int8_t> &in, py::sequence in_dims, const arr<int8_t> &w,
                                       py::sequence w_dims, const arr<int32_t> &bias, int mult, int shift, int in_off,
                                       int w_off, int out_off, int act_min, int act_max, py::sequence out_dims,
                                       arr<int8_t> out, arr<uint8_t> ctx_buf) {
        cmsis_nn_fc_params p{in_off, w_off, out_off, {act_min, act_max}};
        cmsis_nn_per_tensor_quant_params q{mult, shift};
        cmsis_nn_dims id = dims(in_dims), fd = dims(w_dims), od = dims(out_dims), bd{1, 1, 1, od.c};
        cmsis_nn_context ctx = context(ctx_buf);
        return static_cast<int>(arm_fully_connected_s8(&ctx, &p, &q, &id, in.data(), &fd, w.data(), &bd,
                                                       bias.size() ? bias.data() : nullptr, &od, out.mutable_data()));
    });
    m.def("arm_fully_connected_per_channel_s8", [](const arr<int8_t> &in, py::sequence in_dims, const arr<int8_t> &w,
                                                   py::sequence w_dims, const arr<int32_t> &bias, arr<int32_t> mult,
                                                   arr<int32_t> shift, int in_off, int out_off, int act_min,
                                                   int act_max, py::sequence out_dims, arr<int8_t> out, arr<uint8_t> ctx_buf) {
        cmsis_nn_fc_params p{in_off, 0, out_off, {act_min, act_max}};
        cmsis_nn_per_channel_quant_params q{mult.mutable_data(), shift.mutable_data()};
        cmsis_nn_dims id = dims(in_dims), fd = dims(w_dims), od = dims(out_dims), bd{1, 1, 1, od.c};
        cmsis_nn_context ctx = context(ctx_buf);
        return static_cast<int>(arm_fully_connected_per_channel_s8(&ctx, &p, &q, &id, in.data(), &fd, w.data(), &bd,
                                                                   bias.size() ? bias.data() : nullptr, &od,
                                                                   out.mutable_data()));
    });
    m.def("arm_avgpool_s8", [](const arr<int8_t> &in, py::sequence in_dims, py::sequence window, py::sequence stride,
                               py::sequence pad, int act_min, int act_max, py::sequence out_dims, arr<int8_t> out, arr<uint8_t> ctx_buf) {
        cmsis_nn_pool_params p{tile(stride), tile(pad), {act_min, act_max}};
        cmsis_nn_dims id = dims(in_dims), od = dims(out_dims);
        cmsis_nn_dims fd{1, window[0].cast<int32_t>(), window[1].cast<int32_t>(), 1};
        cmsis_nn_context ctx = context(ctx_buf);
        return static_cast<int>(arm_avgpool_s8(&ctx, &p, &id, in.data(), &fd, &od, out.mutable_data()));
    });
    m.def("arm_convolve_s8_get_buffer_size", [](py::sequence in_dims, py::sequence w_dims) {
        cmsis_nn_dims id = dims(in_dims), fd = dims(w_dims);
        return arm_convolve_s8_get_buffer_size(&id, &fd);
    });
    m.def("arm_depthwise_conv_wrapper_s8_get_buffer_size", [](py::sequence in_dims, py::sequence w_dims,
                                                              py::sequence out_dims, int ch_mult) {
        cmsis_nn_dw_conv_params p{0, 0, ch_mult, {1, 1}, {0, 0}, {1, 1}, {-128, 127}};
        cmsis_nn_dims id = dims(in_dims), fd = dims(w_dims), od = dims(out_dims);
        return arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &id, &fd, &od);
    });
    m.def("arm_fully_connected_s8_get_buffer_size", [](py::sequence w_dims) {
        cmsis_nn_dims fd = dims(w_dims);
        return arm_fully_connected_s8_get_buffer_size(&fd);
    });
    m.def("arm_avgpool_s8_get_buffer_size", &arm_avgpool_s8_get_buffer_size);
    m.def("arm_nn_requantize", [](const arr<int32_t> &val, const arr<int32_t> &mult, const arr<int32_t> &shift) {
        arr<int32_t> out(val.size());
        for (py::ssize_t i = 0; i < val.size(); i++) {
            out.mutable_data()[i] = ft_nn_requantize(val.data()[i], mult.data()[i], shift.data()[i]);
        }
        return out;
    });

    // ---- deterministic math used by the training path ----
    m.def("expf", [](const arr<float> &x) {
        arr<float> out(x.size());
        for (py::ssize_t i = 0; i < x.size(); i++) out.mutable_data()[i] = ft_expf(x.data()[i]);
        return out;
    });
    m.def("logf", [](const arr<float> &x) {
        arr<float> out(x.size());
        for (py::ssize_t i = 0; i < x.size(); i++) out.mutable_data()[i] = ft_logf(x.data()[i]);
        return out;
    });
    m.def("permutation", [](uint32_t n, uint32_t key) {
        arr<uint32_t> out(n);
        for (uint32_t i = 0; i < n; i++) out.mutable_data()[i] = ft_permute(i, n, key);
        return out;
    });
    m.def("epoch_key", &ft_epoch_key);
}
