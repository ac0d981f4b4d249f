-- Argo CD health check for siterecovery.io kinds (RecoveryVault, ReplicatedWorkload, Failover).
-- Install it as resource.customizations.health.siterecovery.io_<Kind> in argocd-cm (see the
-- README). Health comes from status conditions; a status older than the spec is Progressing.
local hs = { status = "Progressing", message = "Waiting for the site-recovery operator" }

local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then return c end
  end
  return nil
end

if obj.status == nil or obj.status.conditions == nil then return hs end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

local ready = condition("Ready")
if ready == nil then return hs end

if obj.kind == "Failover" then
  local committed = condition("Committed")
  local failedOver = condition("FailedOver")
  if committed ~= nil and committed.status == "True" then
    hs.status = "Healthy"; hs.message = committed.message; return hs
  end
  if failedOver ~= nil and failedOver.status == "True" then
    hs.status = "Healthy"; hs.message = "Failed over, not committed: " .. failedOver.message; return hs
  end
  if ready.status == "False" and ready.reason ~= "WorkloadNotProtected" then
    hs.status = "Degraded"; hs.message = ready.reason .. ": " .. ready.message; return hs
  end
  hs.message = ready.message
  return hs
end

if ready.status == "False" then
  hs.status = "Degraded"; hs.message = ready.reason .. ": " .. ready.message; return hs
end
if ready.status ~= "True" then
  hs.message = ready.message; return hs
end
if obj.kind == "ReplicatedWorkload" then
  local protected = condition("Protected")
  if protected == nil or protected.status ~= "True" then
    hs.message = "Ready; waiting for the first replicated recovery point"
    return hs
  end
end
hs.status = "Healthy"
hs.message = ready.message
return hs
