-- Argo CD health of a fogline.io ModelTraining. Healthy only once the run that matches
-- the current spec has succeeded and passed its evaluation gate; a spec the operator has
-- not seen yet is Progressing whatever the old status says.
local hs = {}
local status = obj.status
local generation = obj.metadata.generation

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up this ModelTraining"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "The operator has not yet observed generation " .. tostring(generation)
  return hs
end

-- The condition that explains the phase: Succeeded first, else any condition that is not True.
local function explanation()
  local fallback = nil
  if status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      if condition.type == "Succeeded" and condition.message ~= nil and condition.message ~= "" then
        return condition.message
      end
      if fallback == nil and condition.status ~= "True" and condition.message ~= nil then
        fallback = condition.message
      end
    end
  end
  return fallback
end

local phase = status.phase
local detail = explanation()
if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.artifact ~= nil and status.artifact.digest ~= nil then
    hs.message = "Artifact " .. status.artifact.digest .. " passed the evaluation gate"
  else
    hs.message = detail or "Training succeeded"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = detail or "Training failed"
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = detail or "spec.runPolicy.suspend holds the training Job"
elseif phase == "Queued" then
  hs.status = "Progressing"
  hs.message = detail or "Waiting for the queue to admit the training Job"
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = detail or "Waiting for the training pods to start"
elseif phase == "Running" then
  hs.status = "Progressing"
  local progress = status.progress
  if progress ~= nil and progress.epoch ~= nil and progress.epochs ~= nil then
    hs.message = "Training: epoch " .. tostring(progress.epoch) .. " of " .. tostring(progress.epochs)
  else
    hs.message = detail or "Training"
  end
else
  hs.status = "Unknown"
  hs.message = "Unrecognised phase " .. tostring(phase)
end
return hs
