// tailorctl: the command-line client of tailor.

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "client/exit_codes.h"
#include "client/fuse_command.h"
#include "client/inspect_command.h"
#include "client/model_commands.h"
#include "client/remote_commands.h"
#include "client/remote_flags.h"

namespace {

int Run(int argc, char** argv) {
  CLI::App app{
      "tailorctl: inspect checkpoints and fuse fine-tuned models into their "
      "pre-trained base (Model Tailor), locally or through tailord."};
  app.footer(tailor::cli::ExitCodeHelp());
  app.require_subcommand(1);
  app.set_version_flag("--version", "tailorctl 0.1.0");

  tailor::cli::InspectArgs inspect;
  CLI::App* inspect_cmd = app.add_subcommand(
      "inspect",
      "List a checkpoint's tensors (name, dtype, shape, bytes, file) and "
      "totals. URI: a directory with model.safetensors.index.json or "
      "model.safetensors, a .safetensors file, or a PEFT LoRA adapter "
      "directory; plain path, file://, or a remote URI (s3://, https://, "
      "hf://) under a remote --allowed-root, read by range (headers "
      "only).");
  inspect_cmd->add_option("uri", inspect.uri, "checkpoint location")
      ->required();
  inspect_cmd->add_option(
      "--base", inspect.base_uri,
      "for a LoRA adapter: the base checkpoint to show the merged view over");
  inspect_cmd
      ->add_option("-o,--output", inspect.output, "output format: table|json")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  inspect_cmd->add_option("--allowed-root", inspect.allowed_roots,
                          tailor::cli::kAllowedRootHelp);
  tailor::cli::AddRemoteStorageFlags(inspect_cmd, &inspect.remote,
                                     /*writes=*/false);

  tailor::cli::FuseCommand fuse;
  CLI::App* fuse_cmd = fuse.Add(app);
  tailor::cli::FuseCommand assemble(/*assemble=*/true);
  CLI::App* assemble_cmd = assemble.Add(app);
  tailor::cli::ApplyPatchCommand apply_patch;
  CLI::App* apply_cmd = apply_patch.Add(app);
  tailor::cli::CalibrateCommand calibrate;
  CLI::App* calibrate_cmd = calibrate.Add(app);
  tailor::cli::DemoCommand demo;
  CLI::App* demo_cmd = demo.Add(app);
  tailor::cli::RemoteCommands remote;
  remote.Add(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return tailor::cli::kExitUsage;
  }

  if (*inspect_cmd) {
    absl::Status status = tailor::cli::RunInspect(inspect, std::cout);
    if (!status.ok()) return tailor::cli::ReportFailure(status);
    return tailor::cli::kExitOk;
  }
  if (*fuse_cmd) return fuse.Run();
  if (*assemble_cmd) return assemble.Run();
  if (*apply_cmd) return apply_patch.Run();
  if (*calibrate_cmd) return calibrate.Run();
  if (*demo_cmd) return demo.Run();
  if (std::optional<int> code = remote.Run()) return *code;
  return tailor::cli::kExitUsage;
}

}  // namespace

// Every command has finished its work (outputs published and fsynced, the
// job and its files closed) when Run() returns: exit without running the
// static destructors, whose teardown of LibTorch's operator registry alone
// costs 0.1-0.3 s per invocation (issue #11). Sanitizer builds exit
// normally so that leak checking still runs.
int main(int argc, char** argv) {
  const int code = Run(argc, argv);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return code;
#else
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  ::_exit(code);
#endif
}
