// Command etcd builds the upstream etcd server from its Go module: etcd's own go.mod
// carries replace directives, so `go install` of it cannot work; a wrapper module can.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
