#include "server/job_convert.h"

#include "api/spec_convert.h"
#include "google/protobuf/timestamp.pb.h"

namespace tailor::server {
namespace {

void SetTime(absl::Time t, google::protobuf::Timestamp* out) {
  if (t == absl::InfinitePast()) return;
  const int64_t us = absl::ToUnixMicros(t);
  out->set_seconds(us / 1000000);
  out->set_nanos(static_cast<int32_t>(us % 1000000) * 1000);
}

void ProgressToProto(const jobs::JobProgress& p, tailor::v1::Progress* out) {
  out->set_tensors_done(p.tensors_done);
  out->set_tensors_total(p.tensors_total);
  out->set_bytes_done(p.bytes_done);
  out->set_bytes_total(p.bytes_total);
  out->set_elapsed_seconds(p.elapsed_seconds);
  out->set_eta_seconds(p.eta_seconds);
  out->set_tensor(p.tensor);
  out->set_action(p.action);
}

double Number(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

int64_t Integer(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

std::string Text(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

void SummaryToProto(const nlohmann::json& s, tailor::v1::ResultSummary* out) {
  if (!s.is_object()) return;
  out->set_method(Text(s, "method"));
  out->set_tensors_fused(Integer(s, "tensors_fused"));
  out->set_tensors_copied(Integer(s, "tensors_copied"));
  out->set_entries(Integer(s, "entries"));
  out->set_kept(Integer(s, "kept"));
  out->set_kept_fraction(Number(s, "kept_fraction"));
  out->set_error_mask_only(Number(s, "error_mask_only"));
  out->set_error_compensated(Number(s, "error_compensated"));
  out->set_seconds(Number(s, "seconds"));
  out->set_device(Text(s, "device"));
  out->set_fused(Text(s, "fused"));
  out->set_patch(Text(s, "patch"));
  out->set_report(Text(s, "report"));
  out->set_resumed_tensors(Integer(s, "resumed_tensors"));
}

}  // namespace

void JobToProto(const jobs::Job& job, tailor::v1::FusionJob* out) {
  out->set_name(job.name());
  // The stored spec came through SpecToJson and the engine's canonical
  // form, so it converts back.
  absl::StatusOr<tailor::v1::FusionJobSpec> spec = api::SpecFromJson(job.spec);
  if (spec.ok()) *out->mutable_spec() = *spec;
  out->set_state(static_cast<tailor::v1::State>(job.state));
  out->set_priority(job.priority);
  for (const auto& [k, v] : job.labels) (*out->mutable_labels())[k] = v;
  out->set_request_id(job.request_id);
  out->set_creator(job.creator);
  SetTime(job.create_time, out->mutable_create_time());
  SetTime(job.start_time, out->mutable_start_time());
  SetTime(job.end_time, out->mutable_end_time());
  ProgressToProto(job.progress, out->mutable_progress());
  out->set_error_code(job.error_code);
  out->set_error_message(job.error_message);
  out->set_cancel_requested(job.cancel_requested);
  out->set_last_sequence(job.last_sequence);
  if (job.state == jobs::JobState::kSucceeded) {
    SummaryToProto(job.result, out->mutable_result());
  }
}

void EventToProto(const jobs::JobEvent& e, tailor::v1::JobEvent* out) {
  out->set_sequence(e.sequence);
  SetTime(e.time, out->mutable_time());
  switch (e.kind) {
    case jobs::JobEvent::Kind::kStateChange: {
      tailor::v1::StateChange* s = out->mutable_state_change();
      s->set_state(static_cast<tailor::v1::State>(e.state));
      s->set_error_code(e.error_code);
      s->set_error_message(e.error_message);
      if (e.state == jobs::JobState::kSucceeded) {
        SummaryToProto(e.result, s->mutable_result());
      }
      break;
    }
    case jobs::JobEvent::Kind::kProgress:
      ProgressToProto(e.progress, out->mutable_progress());
      break;
    case jobs::JobEvent::Kind::kWarning:
      out->set_warning(e.warning);
      break;
  }
}

}  // namespace tailor::server
