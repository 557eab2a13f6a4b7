"""Test helpers shared by every test folder (on sys.path through pytest's `pythonpath`).

- `services`: `require`, `require_binary`, `free_port` (a missing real service skips, or fails
  under VITALS_REQUIRE_ALL=1);
- `clickhouse`: a throwaway ClickHouse server;
- `collector`: a collector in a thread or a `vitals serve` process;
- `collector_process`: a collector process that can be killed and restarted;
- `fault_collector`: a collector that answers with chosen faults;
- `store_child`: a child process for store tests.
"""
