#include "jobs/job_store.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <optional>

#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "util/file_util.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

constexpr char kMarkerFormat[] = "tailor-store-marker/1";
constexpr char kRecovery[] =
    "To start with an empty store, stop every tailord using this data "
    "directory and move jobs.db, jobs.db-wal, jobs.db-shm and store.id "
    "aside (or restore them from a backup); see README.md, 'Job store'.";

// A failed marker write is not fatal (the marker then lags the database,
// which CheckIdentity allows): a warning "job store: cannot <verb> <marker>:
// <why> (<lag_note>)".
void WarnIfMarkerFailed(const absl::Status& s, const std::string& marker,
                        absl::string_view verb, absl::string_view lag_note) {
  if (s.ok()) return;
  Log(LogLevel::kWarning, "",
      absl::StrCat("job store: cannot ", verb, " ", marker, ": ", s.message(),
                   " (", lag_note, ")"));
}

std::string NewStoreId() {
  absl::BitGen gen;
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen));
}

absl::Status SqliteError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(
      absl::StrCat("job store: ", what, ": ", sqlite3_errmsg(db)));
}

// Owns a prepared statement.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  absl::Status status() const {
    return rc_ == SQLITE_OK ? absl::OkStatus() : SqliteError(db_, "prepare");
  }
  void Bind(int i, const std::string& text) {
    sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()),
                      SQLITE_TRANSIENT);
  }
  void Bind(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  std::string Text(int col) const {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           sqlite3_column_bytes(stmt_, col))
             : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// Steps `query` to the end, parsing column 0 of each row (JSON) into a T
// with T::FromJson.
// With `column1`, column 1 of each row (text) is appended to it too.
template <typename T>
absl::StatusOr<std::vector<T>> ReadRows(
    sqlite3* db, Statement& query,
    std::vector<std::string>* column1 = nullptr) {
  std::vector<T> rows;
  int rc;
  while ((rc = query.Step()) == SQLITE_ROW) {
    if (column1 != nullptr) column1->push_back(query.Text(1));
    nlohmann::json j = nlohmann::json::parse(query.Text(0), nullptr, false);
    if (j.is_discarded()) {
      return absl::DataLossError("job store: a stored row is not valid JSON");
    }
    TAILOR_ASSIGN_OR_RETURN(T row, T::FromJson(j));
    rows.push_back(std::move(row));
  }
  if (rc != SQLITE_DONE) return SqliteError(db, "read");
  return rows;
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    const std::string& path, const std::string& marker_path) {
  // The marker first: what the database must at least hold.
  bool marker_exists = false;
  std::string marker_id;
  int64_t marker_seq = 0;
  if (!marker_path.empty() && PathExists(marker_path)) {
    marker_exists = true;
    absl::StatusOr<std::string> text = ReadFileToString(marker_path, 4096);
    nlohmann::json j = text.ok() ? nlohmann::json::parse(*text, nullptr, false)
                                 : nlohmann::json();
    if (!j.is_object() || j.value("format", "") != kMarkerFormat ||
        !j.contains("store_id") || !j["store_id"].is_string() ||
        !j.contains("commit_seq") || !j["commit_seq"].is_number_integer()) {
      return absl::DataLossError(absl::StrCat(
          "job store: the marker ", marker_path,
          " is unreadable or damaged, so whether ", path,
          " still holds every acknowledged job cannot be checked; refusing "
          "to start. ",
          kRecovery));
    }
    marker_id = j["store_id"].get<std::string>();
    marker_seq = j["commit_seq"].get<int64_t>();
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || st.st_size == 0) {
      return absl::DataLossError(absl::StrCat(
          "job store: ", path, " is ",
          ::stat(path.c_str(), &st) != 0 ? "missing" : "empty (0 bytes)",
          " but ", marker_path, " says store ", marker_id, " had ", marker_seq,
          " commits: acknowledged jobs would be lost; refusing to start. ",
          kRecovery));
    }
  }
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(
      path.c_str(), &db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
      nullptr);
  if (rc != SQLITE_OK) {
    absl::Status s = absl::InternalError(
        absl::StrCat("job store: cannot open ", path, ": ",
                     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<JobStore> store(new JobStore(db, path, marker_path));
  absl::MutexLock lock(&store->mu_);
  sqlite3_busy_timeout(db, 5000);
  // WAL: readers never block the writer, and a commit is one append.
  // synchronous=FULL: every commit fsyncs the WAL, so a job acknowledged by
  // CreateFusionJob (and each event a watcher has seen) survives power loss,
  // not just a process crash -- NORMAL could lose the last commits on power
  // loss, and a lost acknowledged job is the one thing the store must never
  // do. The cost is one fsync per event (per tensor), small against the
  // work of fusing a tensor.
  TAILOR_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  TAILOR_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  {
    Statement check(db, "PRAGMA quick_check");
    std::string verdict = "no answer";
    if (check.status().ok()) {
      if (check.Step() == SQLITE_ROW) verdict = check.Text(0);
    } else {
      verdict = sqlite3_errmsg(db);
    }
    if (verdict != "ok") {
      return absl::DataLossError(absl::StrCat(
          "job store: ", path, " is damaged (SQLite quick_check: ",
          verdict.substr(0, 200), "); refusing to start. ", kRecovery));
    }
  }
  TAILOR_RETURN_IF_ERROR(
      store->Exec("CREATE TABLE IF NOT EXISTS jobs ("
                  " id TEXT PRIMARY KEY,"
                  " request_id TEXT,"
                  " create_order INTEGER NOT NULL,"
                  " state TEXT NOT NULL,"
                  " body TEXT NOT NULL,"
                  " creator TEXT NOT NULL DEFAULT '')"));
  TAILOR_RETURN_IF_ERROR(store->MigrateCreatorColumn());
  TAILOR_RETURN_IF_ERROR(
      store->Exec("CREATE TABLE IF NOT EXISTS events ("
                  " job_id TEXT NOT NULL,"
                  " sequence INTEGER NOT NULL,"
                  " body TEXT NOT NULL,"
                  " PRIMARY KEY (job_id, sequence)) WITHOUT ROWID"));
  TAILOR_RETURN_IF_ERROR(
      store->Exec("CREATE TABLE IF NOT EXISTS meta ("
                  " key TEXT PRIMARY KEY,"
                  " value TEXT NOT NULL) WITHOUT ROWID"));
  TAILOR_RETURN_IF_ERROR(
      store->CheckIdentity(marker_exists, marker_id, marker_seq));
  return store;
}

absl::Status JobStore::CheckIdentity(bool marker_exists,
                                     const std::string& marker_id,
                                     int64_t marker_seq) {
  auto get = [&](const char* key) -> std::optional<std::string> {
    Statement q(db_, "SELECT value FROM meta WHERE key = ?");
    if (!q.status().ok()) return std::nullopt;
    q.Bind(1, std::string(key));
    if (q.Step() != SQLITE_ROW) return std::nullopt;
    return q.Text(0);
  };
  std::optional<std::string> id = get("store_id");
  std::optional<std::string> seq_text = get("commit_seq");
  int64_t seq = 0;
  if (seq_text && !absl::SimpleAtoi(*seq_text, &seq)) seq = -1;
  if (!id) {
    if (marker_exists) {
      return absl::DataLossError(absl::StrCat(
          "job store: ", path_, " has no store id but ", marker_path_,
          " says it is store ", marker_id, " with ", marker_seq,
          " commits: the database was replaced or lost its contents (a "
          "deleted or damaged ",
          Basename(path_), "-wal after a crash?); refusing to start. ",
          kRecovery));
    }
    // A new store (or one written before the marker existed).
    id = NewStoreId();
    seq = 0;
    TAILOR_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    Statement put(db_,
                  "INSERT OR REPLACE INTO meta (key, value) VALUES "
                  "('store_id', ?), ('commit_seq', '0')");
    TAILOR_RETURN_IF_ERROR(put.status());
    put.Bind(1, *id);
    if (put.Step() != SQLITE_DONE) {
      Exec("ROLLBACK").IgnoreError();
      return SqliteError(db_, "write the store id");
    }
    TAILOR_RETURN_IF_ERROR(Exec("COMMIT"));
  } else if (marker_exists && *id != marker_id) {
    return absl::DataLossError(absl::StrCat(
        "job store: ", path_, " is store ", *id, " but ", marker_path_,
        " belongs to store ", marker_id,
        ": the database was replaced; refusing to start. ", kRecovery));
  }
  if (seq < 0) {
    return absl::DataLossError(
        absl::StrCat("job store: ", path_, " has a damaged commit counter '",
                     seq_text->substr(0, 40), "'. ", kRecovery));
  }
  if (marker_exists && seq < marker_seq) {
    return absl::DataLossError(absl::StrCat(
        "job store: ", path_, " holds ", seq, " commits but ", marker_path_,
        " recorded ", marker_seq,
        ": the database is older than what was acknowledged (its WAL, ", path_,
        "-wal, was deleted or damaged, or an old copy was restored); "
        "refusing to start rather than forget or re-run jobs. ",
        kRecovery));
  }
  store_id_ = *id;
  commit_seq_ = seq;
  if (!marker_path_.empty()) {
    // Not fatal: on a full volume the store must still open (the marker
    // only ever lags the database, which the checks above allow).
    WarnIfMarkerFailed(WriteMarker(), marker_path_, "write",
                       "loss detection uses the old marker");
  }
  return absl::OkStatus();
}

absl::Status JobStore::MigrateCreatorColumn() {
  // Stores written before issue #14 have no creator column: add it (their
  // jobs get creator '', which only admins see once authentication is on).
  // ALTER TABLE ADD COLUMN with a constant default rewrites no rows.
  Statement info(db_,
                 "SELECT 1 FROM pragma_table_info('jobs') "
                 "WHERE name = 'creator'");
  TAILOR_RETURN_IF_ERROR(info.status());
  const int rc = info.Step();
  if (rc == SQLITE_ROW) return absl::OkStatus();
  if (rc != SQLITE_DONE)
    return SqliteError(db_, "read the jobs table's columns");
  Log(LogLevel::kInfo, "",
      absl::StrCat("job store: adding the creator column to ", path_,
                   " (jobs stored before it belong to no principal)"));
  return Exec("ALTER TABLE jobs ADD COLUMN creator TEXT NOT NULL DEFAULT ''");
}

absl::Status JobStore::WriteMarker() {
  const nlohmann::json marker = {{"format", kMarkerFormat},
                                 {"store_id", store_id_},
                                 {"commit_seq", commit_seq_},
                                 {"database", Basename(path_)}};
  return WriteFileAtomically(marker_path_, marker.dump() + "\n");
}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::Status JobStore::Exec(const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status s = absl::InternalError(
        absl::StrCat("job store: ", sql, ": ", error ? error : "?"));
    sqlite3_free(error);
    return s;
  }
  return absl::OkStatus();
}

int64_t JobStore::commit_seq() const {
  absl::MutexLock lock(&mu_);
  return commit_seq_;
}

void JobStore::SetFaultForTesting(std::function<absl::Status()> fault) {
  absl::MutexLock lock(&mu_);
  fault_ = std::move(fault);
}

absl::Status JobStore::Transact(absl::FunctionRef<absl::Status()> body,
                                bool mark) {
  if (fault_) TAILOR_RETURN_IF_ERROR(fault_());
  TAILOR_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto all = [&]() -> absl::Status {
    mu_.AssertHeld();  // runs right here, under the caller's lock
    TAILOR_RETURN_IF_ERROR(body());
    Statement seq(db_, "UPDATE meta SET value = ? WHERE key = 'commit_seq'");
    TAILOR_RETURN_IF_ERROR(seq.status());
    seq.Bind(1, absl::StrCat(commit_seq_ + 1));
    if (seq.Step() != SQLITE_DONE) return SqliteError(db_, "count commit");
    return absl::OkStatus();
  };
  absl::Status s = all();
  if (!s.ok()) {
    Exec("ROLLBACK").IgnoreError();
    return s;
  }
  s = Exec("COMMIT");
  if (!s.ok()) {
    // A failed COMMIT may leave the transaction open.
    if (!sqlite3_get_autocommit(db_)) Exec("ROLLBACK").IgnoreError();
    return s;
  }
  ++commit_seq_;
  if (mark && !marker_path_.empty()) {
    WarnIfMarkerFailed(WriteMarker(), marker_path_, "update",
                       "the marker lags the store");
  }
  return absl::OkStatus();
}

absl::Status JobStore::Commit(const Job& job,
                              const std::vector<JobEvent>& events, bool mark) {
  absl::MutexLock lock(&mu_);
  return Transact(
      [&]() -> absl::Status {
        mu_.AssertHeld();  // runs inside Transact, under the lock above
        Statement put(
            db_,
            "INSERT OR REPLACE INTO jobs (id, request_id, create_order,"
            " state, body, creator) VALUES (?, ?, ?, ?, ?, ?)");
        TAILOR_RETURN_IF_ERROR(put.status());
        put.Bind(1, job.id);
        put.Bind(2, job.request_id);
        put.Bind(3, job.create_order);
        put.Bind(4, std::string(JobStateName(job.state)));
        put.Bind(5, job.ToJson().dump());
        put.Bind(6, job.creator);
        if (put.Step() != SQLITE_DONE) return SqliteError(db_, "write job");
        for (const JobEvent& e : events) {
          Statement add(db_,
                        "INSERT INTO events (job_id, sequence, body) "
                        "VALUES (?, ?, ?)");
          TAILOR_RETURN_IF_ERROR(add.status());
          add.Bind(1, job.id);
          add.Bind(2, e.sequence);
          add.Bind(3, e.ToJson().dump());
          if (add.Step() != SQLITE_DONE)
            return SqliteError(db_, "append event");
        }
        return absl::OkStatus();
      },
      mark);
}

absl::Status JobStore::Delete(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  // Marked: a restored copy of the store from before the deletion is seen
  // as stale, as after any other commit.
  return Transact(
      [&]() -> absl::Status {
        mu_.AssertHeld();  // runs inside Transact, under the lock above
        for (const char* sql : {"DELETE FROM events WHERE job_id = ?",
                                "DELETE FROM jobs WHERE id = ?"}) {
          Statement del(db_, sql);
          TAILOR_RETURN_IF_ERROR(del.status());
          del.Bind(1, job_id);
          if (del.Step() != SQLITE_DONE) return SqliteError(db_, "delete job");
        }
        return absl::OkStatus();
      },
      /*mark=*/true);
}

absl::StatusOr<std::vector<Job>> JobStore::LoadJobs() {
  absl::MutexLock lock(&mu_);
  // The creator column is authoritative (the body of a job stored before
  // it existed has none).
  Statement q(db_, "SELECT body, creator FROM jobs ORDER BY create_order");
  TAILOR_RETURN_IF_ERROR(q.status());
  std::vector<std::string> creators;
  auto jobs = ReadRows<Job>(db_, q, &creators);
  if (!jobs.ok()) return jobs.status();
  for (size_t i = 0; i < jobs->size(); ++i) (*jobs)[i].creator = creators[i];
  return jobs;
}

absl::StatusOr<std::vector<JobEvent>> JobStore::LoadEvents(
    const std::string& job_id, int64_t after_sequence, int64_t limit) {
  absl::MutexLock lock(&mu_);
  Statement q(db_,
              "SELECT body FROM events WHERE job_id = ? AND sequence > ? "
              "ORDER BY sequence LIMIT ?");
  TAILOR_RETURN_IF_ERROR(q.status());
  q.Bind(1, job_id);
  q.Bind(2, after_sequence);
  q.Bind(3, limit);
  return ReadRows<JobEvent>(db_, q);
}

}  // namespace tailor::jobs
