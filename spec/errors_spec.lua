-- rotor.errors: the one parser of providers' error bodies, and the one list of request-id headers.
local errors = require "rotor.errors"

describe("errors.detail", function()
  local cases = {
    { "RFC 6749", { error = "invalid_client", error_description = "bad secret" }, "invalid_client: bad secret" },
    { "RFC 6749 short", { error = "invalid_grant" }, "invalid_grant" },
    { "errorCode", { errorCode = "E1", message = "nope" }, "E1: nope" },
    { "Genesys ErrorBody", { message = "Client not found", code = "not.found", status = 404, errors = {} },
      "not.found: Client not found" },
    { "RFC 7807", { title = "Validation failed", errors = { Name = { "required" }, Expires = { "past" } } },
      "Validation failed Expires: past; Name: required" },
    { "SP-API ErrorList", { errors = { { code = "InvalidInput", message = "not enrolled", details = "set it" } } },
      "InvalidInput: not enrolled (set it)" },
    { "SQS", { __type = "com.amazonaws.sqs#QueueDoesNotExist", message = "gone" }, "QueueDoesNotExist: gone" },
    { "Paylocity", { { field = "code", message = "invalid code" }, { message = "again" } },
      "code: invalid code; again" },
    { "nothing known", { foo = 1 }, nil },
    { "not a table", "text", nil },
  }
  for _, c in ipairs(cases) do
    it(c[1], function() assert.equals(c[3], errors.detail(c[2])) end)
  end

  it("is cut at DETAIL_MAX bytes", function()
    local d = errors.detail { message = string.rep("x", 5000) }
    assert.equals(errors.DETAIL_MAX + 3, #d)
  end)
end)

describe("errors.request_id", function()
  it("reads each provider's header", function()
    assert.equals("a", errors.request_id { ["x-amzn-requestid"] = "a" })
    assert.equals("g", errors.request_id { ["inin-correlation-id"] = "g" })
    assert.equals("r", errors.request_id { ["x-request-id"] = "r" })
    assert.is_nil(errors.request_id {})
    assert.is_nil(errors.request_id(nil))
  end)
end)
