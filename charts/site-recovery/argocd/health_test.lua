-- Runs health.lua against fixtures: `lua5.1 health_test.lua` from this directory.
local cjson = require("cjson")
local dir = arg and arg[0] and arg[0]:match("(.*/)") or "./"
local f = assert(io.open(dir .. "health.lua")); local source = f:read("*a"); f:close()

local function health(json)
  obj = cjson.decode(json)
  local chunk = assert(loadstring(source))
  return chunk()
end

local function cond(t, s, reason, msg)
  return string.format('{"type":"%s","status":"%s","reason":"%s","message":"%s","lastTransitionTime":"2026-01-01T00:00:00Z"}', t, s, reason or "R", msg or "m")
end

local function object(kind, generation, observed, conditions)
  local status = ""
  if conditions ~= nil then
    status = string.format(',"status":{"observedGeneration":%d,"conditions":[%s]}', observed, table.concat(conditions, ","))
  end
  return string.format('{"apiVersion":"siterecovery.io/v1alpha1","kind":"%s","metadata":{"name":"x","generation":%d}%s}', kind, generation, status)
end

local cases = {
  { "vault without status", object("RecoveryVault", 1, 0, nil), "Progressing" },
  { "vault ready", object("RecoveryVault", 1, 1, { cond("Ready", "True", "VaultReady") }), "Healthy" },
  { "vault not separated", object("RecoveryVault", 1, 1, { cond("Ready", "False", "NotSeparated", "both in zone a") }), "Degraded", "NotSeparated: both in zone a" },
  { "vault status stale", object("RecoveryVault", 2, 1, { cond("Ready", "True") }), "Progressing" },
  { "workload ready, unprotected", object("ReplicatedWorkload", 1, 1, { cond("Ready", "True"), cond("Protected", "False") }), "Progressing" },
  { "workload protected", object("ReplicatedWorkload", 1, 1, { cond("Ready", "True"), cond("Protected", "True") }), "Healthy" },
  { "workload agent lost", object("ReplicatedWorkload", 1, 1, { cond("Ready", "False", "NotRegistered") }), "Degraded" },
  { "failover waiting for protection", object("Failover", 1, 1, { cond("Ready", "False", "WorkloadNotProtected") }), "Progressing" },
  { "failover duplicate", object("Failover", 1, 1, { cond("Ready", "False", "DuplicateFailover") }), "Degraded" },
  { "failover failed over", object("Failover", 1, 1, { cond("Ready", "True"), cond("FailedOver", "True"), cond("Committed", "False") }), "Healthy" },
  { "failover committed", object("Failover", 2, 2, { cond("Ready", "True"), cond("FailedOver", "True"), cond("Committed", "True") }), "Healthy" },
}

local failed = 0
for _, c in ipairs(cases) do
  local hs = health(c[2])
  local ok = hs.status == c[3] and (c[4] == nil or hs.message == c[4])
  if not ok then
    failed = failed + 1
    print(string.format("FAIL %s: got %s (%s), want %s %s", c[1], hs.status, tostring(hs.message), c[3], c[4] or ""))
  else
    print("ok   " .. c[1])
  end
end
if failed > 0 then os.exit(1) end
print(#cases .. " health checks passed")
