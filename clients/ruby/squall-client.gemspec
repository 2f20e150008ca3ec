# frozen_string_literal: true

require_relative "lib/squall/version"

Gem::Specification.new do |spec|
  spec.name = "squall-client"
  spec.version = Squall::VERSION
  spec.summary = "Ruby client of squall's HTTP API: call squall's named functions with JSON"
  spec.description = "Calls, background tasks, cancellation, typed errors and webhook " \
                     "signature checks against a squall HTTP gateway (squall http)."
  spec.authors = ["squall contributors"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.0" # endless methods; OpenSSL.secure_compare
  # Globbed, not `git ls-files`: the gem builds from a checkout with uncommitted files too.
  spec.files = Dir["lib/**/*.rb"] + ["README.md"]
  spec.require_paths = ["lib"]
  # Standard library only (net/http, json, openssl): no runtime dependencies.
  spec.add_development_dependency "minitest", ">= 5.15"
end
