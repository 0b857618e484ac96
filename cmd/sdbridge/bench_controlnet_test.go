// bench_controlnet_test.go: the controlnet bench part runs on the tiny
// layout and reports a positive time.
package main

import (
	"testing"

	"github.com/sdbridge/sdbridge/models"
)

func TestBenchControlNetTiny(t *testing.T) {
	res, err := benchControlNet(models.Tiny(1000), 8, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Millis <= 0 || res.Part == "" {
		t.Fatalf("result %+v", res)
	}
}
