#ifndef TAILOR_SERVER_JOB_CONVERT_H_
#define TAILOR_SERVER_JOB_CONVERT_H_

#include "jobs/job.h"
#include "tailor/v1/fusion_service.pb.h"

namespace tailor::server {

// The core's job records as tailor.v1 messages.
void JobToProto(const jobs::Job& job, tailor::v1::FusionJob* out);
void EventToProto(const jobs::JobEvent& event, tailor::v1::JobEvent* out);

}  // namespace tailor::server

#endif  // TAILOR_SERVER_JOB_CONVERT_H_
