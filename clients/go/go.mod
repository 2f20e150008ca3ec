module github.com/squall-dev/squall/clients/go

go 1.19
