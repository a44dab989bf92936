-- rotor.core: secrets, redaction, token request encodings, URL policy (no network).
local core = require "rotor.core"
local json = require "rotor.json"
local errors = require "rotor.errors"

describe("rotor.secret", function()
  it("keeps its bytes out of tostring and gives them on reveal", function()
    local s = core.secret("hunter2-very-secret")
    assert.equals("rotor.secret(<redacted>)", tostring(s))
    assert.equals("hunter2-very-secret", s:reveal())
    assert.equals(19, s:len())
    assert.is_true(core.is_secret(s))
    assert.is_false(core.is_secret("x"))
  end)

  it("is unusable once closed, and closing twice is harmless", function()
    local s = core.secret("abcdefgh")
    s:close()
    s:close()
    assert.is_true(s:closed())
    assert.equals("rotor.secret(<closed>)", tostring(s))
    assert.error_matches(function() s:reveal() end, "the secret was closed", nil, true)
  end)

  it("compares in constant time", function()
    local a, b = core.secret("same-bytes"), core.secret("same-bytes")
    assert.is_true(a == b)
    assert.is_true(a:equals("same-bytes"))
    assert.is_false(a:equals("same-bytez"))
  end)

  it("is redacted from any message while it lives", function()
    local s = core.secret("s3cr3t-value-42")
    local msg = core.redact("failed with s3cr3t-value-42 and again s3cr3t-value-42.")
    assert.equals("failed with <redacted> and again <redacted>.", msg)
    s:close()
    assert.equals("x s3cr3t-value-42", core.redact("x s3cr3t-value-42"))
  end)

  it("redacts among thousands of live secrets: made before or after a redaction, closed ones no more", function()
    local live = {}
    for i = 1, 1500 do live[i] = core.secret(("many-%06d-secret"):format(i)) end
    assert.equals("a <redacted> b", core.redact("a many-000007-secret b"))
    for i = 1501, 3000 do live[i] = core.secret(("many-%06d-secret"):format(i)) end
    for i = 1, 3000, 2 do live[i]:close() end
    local parts = {}
    for i = 1, 3000, 500 do parts[#parts + 1] = ("many-%06d-secret"):format(i) end
    for i = 2, 3000, 500 do parts[#parts + 1] = ("many-%06d-secret"):format(i) end
    local out = core.redact(table.concat(parts, ","))
    local closed, open = {}, {}
    for i = 1, 3000, 500 do closed[#closed + 1] = ("many-%06d-secret"):format(i) end
    for _ = 2, 3000, 500 do open[#open + 1] = "<redacted>" end
    assert.equals(table.concat(closed, ",") .. "," .. table.concat(open, ","), out)
    -- the longest form found at a place wins: a secret that is a prefix of another
    local short, long = core.secret("prefix-abc"), core.secret("prefix-abc-and-more")
    assert.equals("[<redacted>] [<redacted>]", core.redact("[prefix-abc-and-more] [prefix-abc]"))
    short:close()
    long:close()
    for i = 2, 3000, 2 do live[i]:close() end
    assert.equals("many-000002-secret", core.redact("many-000002-secret"))
  end)

  it("is redacted in every encoding it can take: JSON, percent, base64 and base64url at any offset", function()
    local raw = "iObGKtihdEScOmDiZxZ+6Q/=="
    local s = core.secret(raw)
    local pct = raw:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)
    local function b64(x) -- RFC 4648, for the spec
      local A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
      return ((x:gsub(".", function(c)
        local r, b = "", c:byte()
        for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
        return r
      end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(bits)
        if #bits < 6 then return "" end
        local c = 0
        for i = 1, 6 do c = c + (bits:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
        return A:sub(c + 1, c + 1)
      end) .. ({ "", "==", "=" })[#x % 3 + 1])
    end
    local cases = {
      "json " .. raw:gsub("/", "\\/"),
      "form " .. pct, "lower " .. pct:gsub("%%%x%x", string.lower),
      "Basic " .. b64("client-id:" .. pct), "Basic " .. b64("ab:" .. raw), b64("x" .. raw .. "yz"),
      "url " .. b64("abc" .. raw):gsub("[+/]", { ["+"] = "-", ["/"] = "_" }),
    }
    for _, c in ipairs(cases) do
      local out = core.redact(c)
      assert.truthy(out:find("<redacted>", 1, true), c .. " -> " .. out)
    end
    assert.equals("Basic <redacted> and more", core.redact("Basic " .. b64("id:" .. raw) .. " and more"))
    s:close()
  end)

  it("is redacted in the exact forms rotor's own token requests carry it ('~', '*', ' ')", function()
    -- form-encoding keeps '*' and writes a space as '+'; RFC 3986 percent-encoding keeps '~':
    -- a secret holding them differs between the two, and a server that echoes the request body
    -- or the Basic header back in an error must not carry it out
    local raw = "s3cr~et*with spaces/and+more"
    local s = core.secret(raw)
    for _, style in ipairs { "form", "basic" } do
      local req = core.token_request { url = "https://login.example/oauth/token", style = style,
        client_id = "client-7", client_secret = s }
      local body = req.body:reveal()
      local auth
      for _, h in ipairs(req.headers) do
        if h[1] == "Authorization" then auth = core.is_secret(h[2]) and h[2]:reveal() or h[2] end
      end
      -- the request's own values are secrets too: closed, so only the client secret's forms match
      req.body:close()
      for _, h in ipairs(req.headers) do if core.is_secret(h[2]) then h[2]:close() end end
      local echoed = style == "form" and ("invalid_client: " .. body:match("client_secret=[^&]*"))
        or ("bad credentials in " .. auth:match("^Basic (.*)$") .. " (401)")
      local out = core.redact(echoed)
      assert.truthy(out:find("<redacted>", 1, true), style .. ": " .. out)
      assert.is_nil(out:find("*with", 1, true), style .. ": " .. out)
    end
    s:close()
  end)

  it("keeps every secret's bytes while secrets of every size come and go (the locked arena)", function()
    -- sizes on both sides of each block size (32 .. 4096 bytes, a byte more for the terminator)
    -- and beyond the largest; made and closed in a shuffled order, each checked on reveal and
    -- redacted (its forms live in the arena too)
    local sizes = { 0, 1, 6, 30, 31, 32, 63, 64, 127, 128, 255, 256, 511, 1023, 2047, 4095, 4096, 5000, 70000 }
    local seed = 12345
    local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 end
    local live, texts = {}, {}
    for step = 1, 3000 do
      local i = rnd(200)
      if live[i] then
        assert.equals(texts[i], live[i]:reveal())
        if #texts[i] >= 6 then
          assert.equals("[<redacted>]", core.redact("[" .. texts[i] .. "]"))
        end
        live[i]:close()
        live[i] = nil
      else
        local n = sizes[rnd(#sizes)]
        local text = ("%05d"):format(step):rep(math.floor(n / 5) + 1):sub(1, n)
        live[i], texts[i] = core.secret(text), text
      end
    end
    for i, s in pairs(live) do
      assert.equals(texts[i], s:reveal())
      s:close()
    end
  end)

  it("fingerprints with HMAC-SHA256 (RFC 4231 test case 2)", function()
    assert.equals("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      core.hmac_sha256_hex("Jefe", core.secret("what do ya want for nothing?")))
  end)

  it("gives random hex of the asked length", function()
    local a, b = core.random_hex(16), core.random_hex(16)
    assert.equals(32, #a)
    assert.is_truthy(a:match("^%x+$"))
    assert.not_equals(a, b)
  end)
end)

describe("core.token_request", function()
  local function header(req, name)
    for _, h in ipairs(req.headers) do
      if h[1] == name then return core.is_secret(h[2]) and h[2]:reveal() or h[2] end
    end
  end

  it("form-encodes id and secret before Basic (RFC 6749 App. B)", function()
    local req = core.token_request { url = "https://login.example/oauth/token", style = "basic",
      client_id = "a b", client_secret = core.secret("p+/=:%") }
    assert.equals("POST", req.method)
    assert.equals("Basic YStiOnAlMkIlMkYlM0QlM0ElMjU=", header(req, "Authorization"))
    assert.equals("grant_type=client_credentials", req.body:reveal())
    assert.is_true(core.is_secret(req.body))
    assert.equals("application/x-www-form-urlencoded", header(req, "Content-Type"))
  end)

  it("puts id, secret and scope in a form body", function()
    local req = core.token_request { url = "https://x/t", style = "form", client_id = "id1",
      client_secret = "a&b=c", scope = "sellingpartnerapi::client_credential:rotation" }
    assert.equals("grant_type=client_credentials&client_id=id1&client_secret=a%26b%3Dc"
      .. "&scope=sellingpartnerapi%3A%3Aclient_credential%3Arotation", req.body:reveal())
    assert.is_nil(header(req, "Authorization"))
  end)

  it("builds multipart with custom field names", function()
    local req = core.token_request { url = "https://x/t", style = "multipart", client_id = "cid",
      client_secret = "iObGKtihdEScOmDiZxZ+6Q==",
      fields = { grant_type = "GrantType", client_id = "ClientId", client_secret = "ClientSecret" } }
    local ctype = header(req, "Content-Type")
    local boundary = ctype:match("^multipart/form%-data; boundary=(.+)$")
    assert.is_truthy(boundary)
    local body = req.body:reveal()
    assert.is_truthy(body:find('name="GrantType"\r\n\r\nclient_credentials\r\n', 1, true))
    assert.is_truthy(body:find('name="ClientSecret"\r\n\r\niObGKtihdEScOmDiZxZ+6Q==\r\n', 1, true))
    assert.is_truthy(body:find("--" .. boundary .. "--\r\n", 1, true))
  end)

  it("takes the grant type as its own field", function()
    local req = core.token_request { url = "https://x/t", style = "form", client_id = "c",
      client_secret = "s", grant_type = "urn:x" }
    assert.equals("grant_type=urn%3Ax&client_id=c&client_secret=s", req.body:reveal())
  end)

  it("refuses an unknown style, json included (no provider uses it)", function()
    for _, style in ipairs { "digest", "json" } do
      assert.has_error(function()
        core.token_request { url = "https://x", style = style, client_id = "a", client_secret = "b" }
      end, "token_request: unknown style '" .. style .. "' (basic, form or multipart)")
    end
  end)
end)

describe("the URL policy of the core", function()
  local m = core.multi()
  teardown(function() m:close() end)

  it("refuses plain http to a non-loopback host before anything is sent", function()
    local id, err = m:add { url = "http://example.com/" }
    assert.is_nil(id)
    assert.equals("config", err.kind)
    assert.matches("loopback", err.message)
  end)

  it("has one home: core.url_policy, which provider options use too (127.300.0.1 is no address)", function()
    assert.equals("https", core.url_policy("https://api.example.com/x"))
    assert.equals("loopback", core.url_policy("http://127.0.0.1:8080/x"))
    assert.equals("loopback", core.url_policy("https://localhost/"))
    assert.equals("loopback", core.url_policy("http://[::1]:9/"))
    for _, bad in ipairs { "http://127.300.0.1/", "http://example.com/", "ftp://127.0.0.1/", "not a url" } do
      local ok, why = core.url_policy(bad)
      assert.is_nil(ok, bad)
      assert.is_string(why)
    end
    local rotor = require "rotor"
    local p, err = rotor.genesys { base_url = "http://127.300.0.1", token_url = "http://127.0.0.1/t",
                                   client_id = "a", client_secret = "b" }
    assert.is_nil(p)
    assert.equals("config", err.kind)
    assert.truthy(err.message:find("base_url", 1, true), err.message)
  end)

  it("gives each URL its own verdict when the same ones come again (the last verdict is kept)", function()
    local urls = { { "https://api.example.com/x", "https" }, { "http://example.com/x", nil },
      { "http://127.0.0.1:8080/x", "loopback" }, { "not a url", nil }, { "ftp://127.0.0.1/", nil } }
    for _ = 1, 3 do
      for _, u in ipairs(urls) do
        assert.equals(u[2], (core.url_policy(u[1])), u[1])
        assert.equals(u[2], (core.url_policy(u[1])), u[1])
      end
    end
    -- a prefix of the last URL is another URL
    assert.equals("https", core.url_policy("https://127.0.0.1.example.com/"))
    assert.equals("loopback", core.url_policy("https://127.0.0.1"))
    assert.equals("https", core.url_policy("https://127.0.0.1.example.com/"))
    local _, why = core.url_policy("http://example.com/x")
    assert.matches("loopback", why)
  end)

  it("refuses other schemes", function()
    local id, err = m:add { url = "ftp://127.0.0.1/" }
    assert.is_nil(id)
    assert.equals("config", err.kind)
  end)

  it("accepts http to 127.0.0.0/8 and reports a refused connection as not sent", function()
    local id = m:add { url = "http://127.0.0.1:1/", connect_timeout = 2 }
    assert.is_number(id)
    local r
    repeat r = m:poll(100)[1] until r
    assert.equals(id, r.id)
    assert.equals("network", r.error.kind)
    assert.is_false(r.sent)
  end)

  it("rejects header values with CR or LF", function()
    assert.error_matches(function()
      m:add { url = "https://127.0.0.1:1/", headers = { { "X-A", "a\r\nInjected: 1" } } }
    end, "request: headers[1] needs a name and a string or secret value without CR/LF", nil, true)
  end)
end)

describe("rotor.errors", function()
  it("formats kind, status, provider, op and request id", function()
    local e = errors.new { kind = "http", status = 404, provider = "genesys", op = "get_oauth_client",
      message = "not found", request_id = "r-1" }
    assert.equals("rotor: genesys get_oauth_client: http 404: not found (request id r-1)", tostring(e))
    assert.is_true(errors.is(e))
  end)
end)

describe("rotor.json", function()
  it("normalises integers and reports malformed input", function()
    local v = json.decode('{"n": 3600, "f": 1.5, "a": [1, 2]}')
    assert.equals(3600, v.n)
    if math.type then
      assert.equals("integer", math.type(v.n))
      assert.equals("integer", math.type(v.a[2]))
    end
    assert.equals(1.5, v.f)
    local bad, err = json.decode("{truncated")
    assert.is_nil(bad)
    assert.matches("malformed JSON", err)
  end)

  -- cjson reads NaN, Infinity and numbers beyond the double range (1e999 is inf), which JSON has
  -- no way to write back: a record holding one could be read but never stored again, and a time
  -- field holding one ended rotor status in a traceback. Such a number is malformed input.
  it("refuses numbers that are not finite (NaN, Infinity, 1e999), wherever they are", function()
    for _, text in ipairs { "1e999", "-1e999", '{"a": NaN}', '[1, [-Infinity]]', '{"v": {"e": 1e400}}', "nan" } do
      local v, err = json.decode(text)
      assert.is_nil(v, text)
      assert.matches("malformed JSON: a number that is not finite", err)
    end
    assert.same({ a = { 1e300, -2.5 } }, json.decode('{"a": [1e300, -2.5]}'))
  end)

  it("keeps empty arrays as arrays, also nested and with whitespace inside, and leaves strings alone", function()
    local text = '{"a": [], "b": [ \n\t], "c": {"d": [[], {"e": []}]}, "s": "x [] y", '
      .. '"q": "q\\"[]\\\\", "o": {}, "n": [1, []]}'
    local v = assert(json.decode(text))
    for _, t in ipairs { v.a, v.b, v.c.d[1], v.c.d[2].e, v.n[2] } do
      assert.is_true(json.is_array(t))
      assert.is_nil(next(t))
    end
    assert.equals("x [] y", v.s)
    assert.equals('q"[]\\', v.q)
    assert.is_false(json.is_array(v.o))
    local back = assert(json.decode(json.encode(v)))
    assert.same(v, back)
    assert.is_true(json.is_array(back.c.d[2].e))
    local out = json.encode(v)
    assert.truthy(out:find('"a":[]', 1, true), out)
    assert.truthy(out:find('"o":{}', 1, true), out)
    assert.truthy(out:find('"s":"x [] y"', 1, true), out)
  end)

  it("writes slashes unescaped, backslashes before them kept", function()
    for _, s in ipairs { "a/b", "a\\/b", "a\\\\/b", "\\", "/", "//\\//", "a\\" } do
      local out = json.encode({ s = s })
      assert.equals(s, json.decode(out).s, out)
      local slashes = select(2, s:gsub("/", ""))
      assert.equals(slashes, select(2, out:gsub("/", "")), out)
    end
  end)

  it("leaves the elements of flat unwalked: an empty flat is still [], a secret inside it is refused", function()
    local function reveal(u) return u:reveal() end
    local j = json.array()
    assert.equals('{"journal":[]}', json.encode({ journal = j }, reveal, j))
    local entries = { { step = "a", note = "x/y" } }
    assert.same({ journal = { { note = "x/y", step = "a" } } },
      json.decode(json.encode({ journal = entries }, reveal, entries)))
    -- leaf does not reach into flat's elements: a secret there is an error, never written out
    local s = core.secret("never-in-a-journal")
    local bad = { { step = "a", note = s } }
    local ok, err = pcall(json.encode, { journal = bad }, reveal, bad)
    assert.is_false(ok)
    assert.is_nil(tostring(err):find("never-in-a-journal", 1, true))
    assert.truthy(json.encode({ journal = bad }, reveal):find("never-in-a-journal", 1, true))
    s:close()
  end)

  it("encodes userdata through leaf and changes none of the value it was given", function()
    local secret = core.secret("s3cr/t")
    local inner = { secret = secret, list = json.array() }
    local v = { a = { inner }, keep = { x = 1 }, n = 2 }
    local out = json.encode(v, function(u) return core.is_secret(u) and u:reveal() or u end)
    assert.same({ a = { { secret = "s3cr/t", list = {} } }, keep = { x = 1 }, n = 2 }, json.decode(out))
    assert.is_true(json.is_array(json.decode(out).a[1].list))
    assert.equals(secret, inner.secret)        -- the caller's tables still hold the userdata
    assert.equals(inner, v.a[1])
    assert.is_nil(next(inner.list))
    assert.has_error(function() json.encode({ s = secret }) end)   -- no leaf: cjson refuses it
  end)
end)
