-- wrk script for benchmarks/payments_load.py: POST /api/v1/payments/terminal/payments.
--
-- payments_load.py copies this file into a temporary directory with the placeholders
-- (@ACCOUNTS@ ...) filled in and runs `wrk --latency -s <copy>`. Every thread numbers its
-- own transactions (<tag>-<thread>-<n>); with probability @DUP_SHARE@ a request instead
-- repeats one of the thread's last 1,000 transactions with the same account and amount (a
-- duplicate delivery, possibly while the first is still in flight on another connection).
-- Each new transaction is written to sent-<thread>.tsv so the script can check the ledger
-- against what was sent; done() prints one BENCH_JSON line with the counters and latencies.

local ACCOUNTS = @ACCOUNTS@
local DUP_SHARE = @DUP_SHARE@
local TAG = "@TAG@"
local AUTH = "@AUTH@"
local LOGDIR = "@LOGDIR@"
local RECENT = 1000

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("tid", thread_count)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(tid * 7919 + 17)
   sent, new, dups, s200, s201, other = 0, 0, 0, 0, 0, 0
   recent = {}
   log = assert(io.open(LOGDIR .. "/sent-" .. tid .. ".tsv", "w"))
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = AUTH
end

function request()
   local txn, account, amount
   if new > 0 and math.random() < DUP_SHARE then
      local r = recent[math.random(math.min(new, RECENT))]
      txn, account, amount = r[1], r[2], r[3]
      dups = dups + 1
   else
      new = new + 1
      txn = TAG .. "-" .. tid .. "-" .. new
      account = string.format("P%09d01", math.random(0, ACCOUNTS - 1))
      amount = string.format("%d.%02d", math.random(10, 499), math.random(0, 99))
      recent[((new - 1) % RECENT) + 1] = { txn, account, amount }
      log:write(txn, "\t", account, "\t", amount, "\n")
      if new % 50 == 0 then
         log:flush()
      end
   end
   sent = sent + 1
   local body = '{"txn_id":"' .. txn .. '","account_number":"' .. account .. '","amount":"' .. amount
      .. '","method":"cash"}'
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   if status == 201 then
      s201 = s201 + 1
   elseif status == 200 then
      s200 = s200 + 1
   else
      other = other + 1
      if other <= 5 then
         io.stderr:write("non-2xx: ", status, " ", body or "", "\n")
      end
   end
   if log then
      log:flush()
   end
end

function done(summary, latency, requests)
   local t = { sent = 0, new = 0, dups = 0, s200 = 0, s201 = 0, other = 0 }
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do
         t[k] = t[k] + (thread:get(k) or 0)
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,'
         .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,'
         .. '"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,"sent":%d,"new":%d,"dups":%d,'
         .. '"s200":%d,"s201":%d,"other":%d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean,
      t.sent, t.new, t.dups, t.s200, t.s201, t.other))
end
