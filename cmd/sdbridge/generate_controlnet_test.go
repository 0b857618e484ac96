// generate_controlnet_test.go: parsing of the repeatable ControlNet flags.
package main

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestControlNetFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    []controlNetUnitFlags
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"defaults", []string{"--controlnet", "a.safetensors", "--control-image", "a.png"},
			[]controlNetUnitFlags{{path: "a.safetensors", image: "a.png", preprocess: "none", resize: "crop", strength: 1, end: 1}}, ""},
		{"two units", []string{
			"--controlnet", "canny.safetensors", "--control-image", "edges.png", "--control-preprocess", "canny:50:150",
			"--control-strength", "0.9", "--control-start", "0.1", "--control-end", "0.8", "--control-resize", "pad",
			"--controlnet", "tile.safetensors", "--control-image", "photo.jpg", "--control-preprocess", "tile:2", "--control-guess",
			"--control-prompt", "a red house", "--control-range", "sigma", "--control-global-pool=false",
		}, []controlNetUnitFlags{
			{path: "canny.safetensors", image: "edges.png", preprocess: "canny:50:150", resize: "pad", strength: 0.9, start: 0.1, end: 0.8},
			{path: "tile.safetensors", image: "photo.jpg", preprocess: "tile:2", resize: "crop", strength: 1, end: 1, guess: true, prompt: "a red house",
				sigmaRange: true, globalPool: new(bool)},
		}, ""},
		{"bad range", []string{"--controlnet", "a", "--control-range", "percent"}, nil, "unknown range"},
		{"setting before net", []string{"--control-image", "a.png", "--controlnet", "a.safetensors"}, nil, "must follow the --controlnet"},
		{"guess before net", []string{"--control-guess"}, nil, "must follow the --controlnet"},
		{"bad preprocessor", []string{"--controlnet", "a", "--control-preprocess", "hed"}, nil, "unknown"},
		{"bad resize", []string{"--controlnet", "a", "--control-resize", "zoom"}, nil, "unknown resize mode"},
		{"bad strength", []string{"--controlnet", "a", "--control-strength", "strong"}, nil, "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("generate", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			o := controlNetFlags(fs)
			err := fs.Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []controlNetUnitFlags
			for _, u := range o.units {
				got = append(got, *u)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(controlNetUnitFlags{})); diff != "" {
				t.Errorf("units (-want +got):\n%s", diff)
			}
			if o.enabled() != (len(tt.want) > 0) {
				t.Errorf("enabled() = %v", o.enabled())
			}
		})
	}
}
