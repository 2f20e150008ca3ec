# frozen_string_literal: true

# Ruby client of squall's HTTP API v1 (docs/http.md): call named functions with JSON.
require_relative "squall/version"
require_relative "squall/errors"
require_relative "squall/webhook"
require_relative "squall/client"
