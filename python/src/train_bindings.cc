// The Python package's training and run API (sparsemoe.train, sparsemoe.load_run): a Trainer run
// with the GIL released and a progress callback that sees each metrics.jsonl record, and a trained
// run read back for evaluation and prediction. A callback that raises (KeyboardInterrupt
// included) stops the training at the end of that step with a checkpoint, as SIGINT does on the
// command line, and the exception then reaches the caller.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bindings.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/data/corpus.h"
#include "sparsemoe/train/task_model.h"
#include "sparsemoe/train/train_config.h"
#include "sparsemoe/train/trainer.h"

namespace py = pybind11;

namespace sparsemoe::python {

namespace {

const char* outcome_name(TrainOutcome o) {
  switch (o) {
    case TrainOutcome::kFinished:
      return "finished";
    case TrainOutcome::kStopped:
      return "stopped";
    case TrainOutcome::kInterrupted:
      return "interrupted";
    case TrainOutcome::kAlreadyFinished:
      return "already_finished";
  }
  return "?";
}

py::dict train(const std::string& config_json, const std::string& config_path,
               const std::string& out, const py::object& progress, int64_t stop_after_step,
               bool resume, bool verbose) {
  check_arg(!out.empty(), "argument 'out': the run directory is required");
  check_arg(stop_after_step >= 0,
            "argument 'stop_after_step': expected >= 0, got " + std::to_string(stop_after_step));
  std::atomic<int> stop{0};
  py::object pending;  // the exception a callback raised (null: none), re-raised after the run
  TrainOptions opt;
  opt.stop_after_step = stop_after_step;
  opt.stop_signal = &stop;
  opt.log = verbose ? &std::cerr : nullptr;  // the process's stderr, as the CLI's
  opt.on_record = [&](const nlohmann::json& record) {
    py::gil_scoped_acquire gil;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!progress.is_none()) progress(json_to_py(record));
    } catch (py::error_already_set& e) {
      if (!pending) pending = e.value();
      stop = 1;
    }
  };
  std::unique_ptr<Trainer> trainer;
  TrainResult r;
  {
    py::gil_scoped_release release;
    if (resume) {
      trainer = Trainer::resume(out, opt);
    } else {
      const TrainConfig config = config_path.empty()
                                     ? TrainConfig::from_json(py_to_json(config_json, "config"))
                                     : load_train_config(config_path);
      trainer = std::make_unique<Trainer>(config, out, opt);
    }
    r = trainer->run();
  }
  if (pending) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(pending.ptr())), pending.ptr());
    throw py::error_already_set();
  }
  py::dict d;
  d["outcome"] = outcome_name(r.outcome);
  d["step"] = r.step;
  d["seconds"] = r.seconds;
  d["out"] = out;
  if (r.outcome == TrainOutcome::kFinished) {
    d["test_accuracy"] = r.test.accuracy;
    d["test_loss"] = r.test.loss;
    d["test_examples"] = r.test.count;
    d["majority_accuracy"] = r.majority_accuracy;
  }
  return d;
}

// A trained run read back (sparsemoe.load_run).
struct PyRun {
  explicit PyRun(const std::string& dir) : run(load_run(dir)) {}

  py::dict evaluate(const std::string& split_name) {
    const Split split = parse_split(split_name, "argument 'split'");
    EvalResult r;
    std::string majority;
    double majority_acc = 0;
    {
      Compute compute(mu);
      const TaskData d =
          prepare_task_data(run.config.data, load_corpus(run.config.data), run.tokenizer);
      const TokenizedSet& set = d.classify[static_cast<int>(split)];
      r = evaluate_classifier(*run.model, set, run.config.batch_size);
      int64_t hits = 0;
      for (int64_t l : set.labels) hits += l == d.majority_label;
      majority = run.labels[d.majority_label];
      majority_acc = set.size() ? hits / static_cast<double>(set.size()) : 0;
    }
    const auto C = static_cast<py::ssize_t>(run.labels.size());
    py::array_t<int64_t> confusion({C, C});
    std::copy(r.confusion.begin(), r.confusion.end(), confusion.mutable_data());
    py::dict d;
    d["split"] = split_name;
    d["accuracy"] = r.accuracy;
    d["loss"] = r.loss;
    d["examples"] = r.count;
    d["majority_class"] = majority;
    d["majority_accuracy"] = majority_acc;
    d["confusion"] = confusion;
    return d;
  }

  // Class probabilities [N, C] for texts (each cut to the model's sequence length).
  py::array_t<float> predict_proba(const std::vector<std::string>& texts) {
    const auto C = static_cast<py::ssize_t>(run.labels.size());
    py::array_t<float> out({static_cast<py::ssize_t>(texts.size()), C});
    {
      Compute compute(mu);
      std::vector<std::vector<int>> rows;
      rows.reserve(texts.size());
      for (const std::string& t : texts)
        rows.push_back(
            run.tokenizer.encode(predict_prefix(t, run.config.model.max_sequence_length)));
      const auto probs = predict_probabilities(*run.model, rows, run.config.batch_size);
      float* o = out.mutable_data();
      for (size_t i = 0; i < probs.size(); ++i)
        std::copy(probs[i].begin(), probs[i].end(), o + i * C);
    }
    return out;
  }

  LoadedRun run;
  std::mutex mu;  // Compute
};

}  // namespace

void bind_training(py::module_& m) {
  m.def("train", &train, py::arg("config_json"), py::arg("config_path"), py::arg("out"),
        py::arg("progress"), py::arg("stop_after_step"), py::arg("resume"), py::arg("verbose"));
  py::class_<PyRun>(m, "Run")
      .def(py::init<const std::string&>(), py::arg("run_dir"))
      .def("evaluate", &PyRun::evaluate, py::arg("split") = "test")
      .def("predict_proba", &PyRun::predict_proba, py::arg("texts"))
      .def_property_readonly("labels", [](const PyRun& r) { return r.run.labels; })
      .def_property_readonly("step", [](const PyRun& r) { return r.run.step; })
      .def("config_json", [](const PyRun& r) { return r.run.config.to_json().dump(); });
}

}  // namespace sparsemoe::python
