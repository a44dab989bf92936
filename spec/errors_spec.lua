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

-- a provider's error text reached the terminal as it came: an escape sequence in an error message
-- (or a request id, or a body excerpt) was obeyed by the operator's terminal
describe("a provider's text in a message", function()
  it("shows every control byte as \\xHH", function()
    assert.equals("code: a\\x1B[2Jb\\x07", errors.detail { code = "code", message = "a\27[2Jb\7" })
    assert.equals("not.found: x\\x1B]0;owned\\x07",
      errors.detail { error = "not.found", description = "x\27]0;owned\7" })
    assert.equals("id\\x1B[31m", errors.request_id { ["x-request-id"] = "id\27[31m" })
    assert.equals("<html> \\x1B[2J boom", errors.excerpt("<html>\n\27[2J\r\nboom"))
    assert.equals("plain text: kept", errors.detail { message = "plain text: kept" })
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
