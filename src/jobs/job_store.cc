#include "jobs/job_store.h"

#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace tailor::jobs {
namespace {

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
template <typename T>
absl::StatusOr<std::vector<T>> ReadRows(sqlite3* db, Statement& query) {
  std::vector<T> rows;
  int rc;
  while ((rc = query.Step()) == SQLITE_ROW) {
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
    const std::string& path) {
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
  std::unique_ptr<JobStore> store(new JobStore(db));
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
  TAILOR_RETURN_IF_ERROR(
      store->Exec("CREATE TABLE IF NOT EXISTS jobs ("
                  " id TEXT PRIMARY KEY,"
                  " request_id TEXT,"
                  " create_order INTEGER NOT NULL,"
                  " state TEXT NOT NULL,"
                  " body TEXT NOT NULL)"));
  TAILOR_RETURN_IF_ERROR(
      store->Exec("CREATE TABLE IF NOT EXISTS events ("
                  " job_id TEXT NOT NULL,"
                  " sequence INTEGER NOT NULL,"
                  " body TEXT NOT NULL,"
                  " PRIMARY KEY (job_id, sequence)) WITHOUT ROWID"));
  return store;
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

absl::Status JobStore::Commit(const Job& job,
                              const std::vector<JobEvent>& events) {
  absl::MutexLock lock(&mu_);
  TAILOR_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto body = [&]() -> absl::Status {
    Statement put(db_,
                  "INSERT OR REPLACE INTO jobs (id, request_id, create_order,"
                  " state, body) VALUES (?, ?, ?, ?, ?)");
    TAILOR_RETURN_IF_ERROR(put.status());
    put.Bind(1, job.id);
    put.Bind(2, job.request_id);
    put.Bind(3, job.create_order);
    put.Bind(4, std::string(JobStateName(job.state)));
    put.Bind(5, job.ToJson().dump());
    if (put.Step() != SQLITE_DONE) return SqliteError(db_, "write job");
    for (const JobEvent& e : events) {
      Statement add(db_,
                    "INSERT INTO events (job_id, sequence, body) "
                    "VALUES (?, ?, ?)");
      TAILOR_RETURN_IF_ERROR(add.status());
      add.Bind(1, job.id);
      add.Bind(2, e.sequence);
      add.Bind(3, e.ToJson().dump());
      if (add.Step() != SQLITE_DONE) return SqliteError(db_, "append event");
    }
    return absl::OkStatus();
  };
  absl::Status s = body();
  if (!s.ok()) {
    Exec("ROLLBACK").IgnoreError();
    return s;
  }
  return Exec("COMMIT");
}

absl::StatusOr<std::vector<Job>> JobStore::LoadJobs() {
  absl::MutexLock lock(&mu_);
  Statement q(db_, "SELECT body FROM jobs ORDER BY create_order");
  TAILOR_RETURN_IF_ERROR(q.status());
  return ReadRows<Job>(db_, q);
}

absl::StatusOr<std::vector<JobEvent>> JobStore::LoadEvents(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Statement q(db_,
              "SELECT body FROM events WHERE job_id = ? ORDER BY sequence");
  TAILOR_RETURN_IF_ERROR(q.status());
  q.Bind(1, job_id);
  return ReadRows<JobEvent>(db_, q);
}

}  // namespace tailor::jobs
