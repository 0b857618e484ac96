// sharded.go opens a checkpoint split over several files and described by a
// Hugging Face `model.safetensors.index.json` ({"weight_map": {name: file}}).
// Each shard is mapped once; lookups go to the shard the index names. It
// does not merge headers into one file or copy any tensor.
package safetensors

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Sharded is a set of safetensors files behind one index.
type Sharded struct {
	Path   string
	shards map[string]*File
	owner  map[string]*File
	names  []string
}

// OpenIndex opens the index file and every shard it names.
func OpenIndex(indexPath string) (*Sharded, error) {
	b, err := os.ReadFile(indexPath)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("safetensors: index %s: %w", indexPath, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("safetensors: index %s has an empty weight_map", indexPath)
	}
	s := &Sharded{Path: indexPath, shards: map[string]*File{}, owner: map[string]*File{}}
	dir := filepath.Dir(indexPath)
	for name, shard := range idx.WeightMap {
		if strings.Contains(shard, "/") || strings.Contains(shard, "..") {
			s.Close()
			return nil, fmt.Errorf("safetensors: index %s: shard %q must be a file name in the same folder", indexPath, shard)
		}
		f, ok := s.shards[shard]
		if !ok {
			if f, err = Open(filepath.Join(dir, shard)); err != nil {
				s.Close()
				return nil, fmt.Errorf("safetensors: index %s: %w", indexPath, err)
			}
			s.shards[shard] = f
		}
		if _, ok := f.Lookup(name); !ok {
			s.Close()
			return nil, fmt.Errorf("safetensors: index %s: tensor %q is not in shard %s", indexPath, name, shard)
		}
		s.owner[name] = f
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	return s, nil
}

// Get returns a zero-copy view of a tensor from its shard.
func (s *Sharded) Get(name string) (Tensor, error) {
	f, ok := s.owner[name]
	if !ok {
		return Tensor{}, fmt.Errorf("safetensors: %s: tensor %q not found", s.Path, name)
	}
	return f.Get(name)
}

// Lookup returns a tensor's header info.
func (s *Sharded) Lookup(name string) (*Info, bool) {
	f, ok := s.owner[name]
	if !ok {
		return nil, false
	}
	return f.Lookup(name)
}

// Names lists every tensor of the set, sorted.
func (s *Sharded) Names() []string { return s.names }

// Close unmaps every shard.
func (s *Sharded) Close() error {
	var first error
	for _, f := range s.shards {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
