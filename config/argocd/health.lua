-- Argo CD health check for tripswitch.io/CircuitBreaker.
-- Closed is Healthy; Open is Degraded (the target is failing and traffic is held back);
-- HalfOpen, and a breaker not yet reconciled, are Progressing. A breaker that cannot be
-- reconciled (Stalled) is Degraded; one waiting on something (Reconciling) is Progressing. A
-- Closed breaker whose trip the observer guard holds is Degraded. An Open breaker's message
-- says when no responder answers its clients.
local hs = {}

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil or
    (obj.metadata.generation ~= nil and status.observedGeneration < obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for tripswitch to reconcile the breaker"
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. stalled.message
  return hs
end
local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.reason .. ": " .. reconciling.message
  return hs
end

-- A trip the observer guard holds: a trip rule holds, but the breaker stays Closed because too
-- many breakers would trip at once, so traffic still reaches a target that fails its probes.
local held = condition(status.conditions, "ObserverGuard")
if held ~= nil and held.status == "True" and status.state == "Closed" then
  hs.status = "Degraded"
  hs.message = "Trip held by the observer guard: " .. held.message
  return hs
end

local mode = ""
if obj.spec ~= nil and obj.spec.mode ~= nil and obj.spec.mode ~= "Auto" then
  mode = " (mode " .. obj.spec.mode .. ", gate " .. (status.gateState or "unknown") .. ")"
end

if status.state == "Closed" then
  hs.status = "Healthy"
  hs.message = "Breaker is Closed" .. mode
elseif status.state == "Open" then
  hs.status = "Degraded"
  hs.message = "Breaker is Open (" .. (status.reason or "unknown reason") .. ")"
  if status.openUntil ~= nil then
    hs.message = hs.message .. " until " .. status.openUntil
  end
  if status.lastProbe ~= nil and status.lastProbe.message ~= nil then
    hs.message = hs.message .. "; last probe: " .. status.lastProbe.message
  end
  -- Without a ready responder, clients get kube-proxy's rate-limited ICMP reject rather than a
  -- fast answer: worth saying where people look.
  local responder = condition(status.conditions, "Responder")
  if responder ~= nil and responder.status == "False" then
    hs.message = hs.message .. "; " .. responder.reason .. ": clients get kube-proxy's reject"
  end
  hs.message = hs.message .. mode
elseif status.state == "HalfOpen" then
  hs.status = "Progressing"
  hs.message = "Breaker is HalfOpen: trial probes are testing the target" .. mode
else
  hs.status = "Progressing"
  hs.message = "Waiting for the breaker's first state"
end
return hs
