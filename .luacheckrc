std = "max"
codes = true
max_line_length = 120
exclude_files = { "build/**", ".luarocks/**" }
files["spec/**/*_spec.lua"] = { std = "+busted" }
files["spec/simulator/**/*.lua"] = { globals = { "ngx" } }
files["lua/rotor/ngx.lua"] = { globals = { "ngx" } }
files["examples/openresty/**/*.lua"] = { globals = { "ngx" } }
