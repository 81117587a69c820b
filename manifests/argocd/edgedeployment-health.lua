-- Argo CD health of a fogline.io EdgeDeployment. Healthy only when every site serves the
-- target model of the current spec; a rolled-back or failed rollout is Degraded (the old
-- model may still serve, but the spec in Git is not what runs), a paused one Suspended.
local hs = {}
local status = obj.status
local generation = obj.metadata.generation

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up this EdgeDeployment"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "The operator has not yet observed generation " .. tostring(generation)
  return hs
end

local function sites()
  if status.sitesReady ~= nil then
    return " (" .. tostring(status.sitesReady) .. " sites ready)"
  end
  return ""
end

local phase = status.phase
local detail = status.message
if phase == "Available" then
  hs.status = "Healthy"
  hs.message = (detail or "Serving the target model") .. sites()
elseif phase == "Progressing" or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = (detail or "Rolling out") .. sites()
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = (detail or "Rollout paused") .. sites()
elseif phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = (detail or "Some sites do not serve the target model") .. sites()
elseif phase == "RolledBack" then
  hs.status = "Degraded"
  local failed = ""
  if status.failedSite ~= nil then
    failed = " after site " .. status.failedSite .. " failed"
  end
  hs.message = (detail or ("Rolled back" .. failed)) .. sites()
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = detail or "Rollout failed"
else
  hs.status = "Unknown"
  hs.message = "Unrecognised phase " .. tostring(phase)
end
return hs
